"""Smoke run of bench/indexing.py: a handful of photos both ways, so a broken indexing benchmark is noticed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.gateway import run_benchmark


def test_indexing_benchmark_smoke(tmp_path: Path, demo_root: Path) -> None:
    out = tmp_path / "indexing.json"
    result = run_benchmark("indexing", "--smoke", "--models", str(demo_root), "--json", str(out), timeout=600)
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["made"] == {"single": 4, "group": 4}
    for kind in ("single", "group"):
        for way in ("sequential", "pooled"):
            row = report["ways"][kind][way]
            assert row["photos"] == 4 and row["photos_per_s"] > 0 and row["faces"] >= 1
    assert "pooled / sequential" in result.stdout
