"""Smoke run of the load soak: a few clients for a few seconds against the gateway under gunicorn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.gateway import demo_serving_dir, run_benchmark


@pytest.mark.slow
def test_soak_benchmark_smoke(tmp_path: Path, demo_root: Path):
    config = demo_serving_dir(tmp_path, demo_root)
    out = tmp_path / "soak.json"
    run_benchmark("soak", "--smoke", "--model-config", str(config), "--json", str(out), timeout=180)
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["clients"] == 4
    load = report["load"]
    assert load["errors"] == 0, load["error_kinds"]
    assert load["ok"] == load["requests"] > 0
    assert report["server_alive_at_end"]
    rss = report["rss_mb"]
    # A gateway with four TensorFlow servables loaded holds well over 100 MB; the reading is of real processes.
    assert min(rss["after_warmup"], rss["end"]) > 100
    assert len(report["rss_samples_mb"]) >= 5
    assert set(report["targets"]) == {"errors", "rss_growth_after_warmup"}
