"""Smoke run of bench/model_server.py: a few calls per route, so a broken model server benchmark is noticed."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import run_benchmark


@pytest.mark.slow
def test_model_server_benchmark_smoke(tmp_path):
    out = tmp_path / "model_server.json"
    result = run_benchmark("model_server", "--smoke", "--json", str(out), timeout=600)
    assert "Predict through the model server vs in the process" in result.stdout
    results = json.loads(out.read_text())
    assert results["smoke"]
    assert [row["model"] for row in results["rows"]] == ["half_plus", "mean_colour"]
    for row in results["rows"]:
        assert set(row["routes"]) == {"runtime", "server", "double", "process"}
        assert all(stats["p50_ms"] > 0 for stats in row["routes"].values())
        for route, overhead in row["overhead_p50_ms"].items():
            assert overhead == pytest.approx(row["routes"][route]["p50_ms"] - row["routes"]["runtime"]["p50_ms"])
    assert "mean_colour" in results["rows"][1]["model"] and "[1, 1000, 1000, 3]" in results["rows"][1]["input"]
    assert all(value > 0 for value in results["throughput"]["calls_per_s"].values())
