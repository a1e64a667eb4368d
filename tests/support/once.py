"""What a test run builds once and only reads: exported servables, shared by every pytest-xdist worker.

A session fixture runs once per worker process; exporting the demo servables costs about 26 s of CPU, so with
``make test-fast``'s workers each doing it the run would pay it several times over. :func:`built_once` builds
into the run's shared temporary folder under a file lock: the first worker builds, the others wait and reuse.
A build that fails leaves nothing marked complete, so the next worker tries again and reports its own error.
What it returns is read only: tests copy it before they change anything (as they did with a session fixture).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

__all__ = ["built_once"]


def _run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder of this whole run: under xdist, the parent of every worker's own (popen-gw0, ...)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """``name``'s folder, made by ``build(folder)`` once for the run however many workers ask; returns the folder."""
    run = _run_folder(tmp_path_factory)
    folder = run / f"once-{name}"
    done = run / f"once-{name}.complete"
    with (run / f"once-{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build left
            folder.mkdir()
            build(folder)
            done.touch()
    return folder
