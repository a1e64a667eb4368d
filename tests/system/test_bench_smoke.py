"""Smoke runs of the benchmarks: tiny sizes, so a broken benchmark script is noticed by `make test`."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import run_benchmark


@pytest.mark.slow
def test_search_benchmark_smoke(tmp_path):
    out = tmp_path / "search.json"
    result = run_benchmark("search", "--smoke", "--json", str(out))
    assert "ours" in result.stdout
    assert json.loads(out.read_text())
