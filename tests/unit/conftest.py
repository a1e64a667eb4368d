"""The unit tier's rules, checked on every test: no TensorFlow import, no subprocess."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("a unit test started a subprocess: it belongs in tests/system")


@pytest.fixture(autouse=True)
def unit_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse subprocesses; fail a test that imports TensorFlow (checked when it was not imported before: the
    unit tier runs first, so in every run of it that is every test)."""
    loaded_before = "tensorflow" in sys.modules
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
    yield
    if not loaded_before:
        assert "tensorflow" not in sys.modules, "a unit test imported TensorFlow: it belongs in tests/contract"
