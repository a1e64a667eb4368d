"""Smoke runs of the benchmarks: tiny sizes, so a broken benchmark script is noticed by `make test`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_benchmark_smoke(tmp_path):
    out = tmp_path / "search.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "search.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ours" in result.stdout
    assert json.loads(out.read_text())
