"""Helpers the tests and benchmarks share: servables, programs, live servers; never a test module."""
