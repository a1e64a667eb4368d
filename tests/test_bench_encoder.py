"""Smoke run of bench/encoder.py: a handful of faces, so a broken encoder benchmark is noticed by `make test`."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_encoder_benchmark_smoke(tmp_path):
    out = tmp_path / "encoder.json"
    result = run_benchmark("encoder.py", "--smoke", "--json", str(out), timeout=600)
    assert "new top1" in result.stdout and "CPU ms per face" in result.stdout
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    for dataset in ("lfw", "lfw_aligned", "samples"):
        assert set(results[dataset]["new"]) == {"flip", "rotate", "shift_scale", "down24", "grey", "jpeg30",
                                                "combined", "all"}  # fmt: skip
    assert results["cpu"]["new"]["batched_ms_per_face"] > 0
