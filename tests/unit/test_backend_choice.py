"""Which backend the settings open: the embedded one needs TensorFlow, and says so where it is missing."""

from __future__ import annotations

import importlib.util

import pytest

from app.config import Settings
from app.web import extensions


def test_the_embedded_backend_without_tensorflow_says_what_to_set(monkeypatch):
    # As in the thin image (requirements-gateway.txt): TensorFlow cannot be found.
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else found(name, *a))
    with pytest.raises(ValueError, match=r"GATEWAY_BACKEND=grpc and GATEWAY_SERVING_TARGET=") as raised:
        extensions.create_backend(Settings.load({"backend": "local"}, environ={}))
    assert "needs TensorFlow" in str(raised.value)
