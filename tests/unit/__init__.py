"""Unit tests: no TensorFlow import, no subprocess, no server; the fast tier."""
