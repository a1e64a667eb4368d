"""Smoke run of the rollout benchmark: a traffic split and shadow copies measured through gunicorn, a few requests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.gateway import demo_serving_dir, run_benchmark


@pytest.mark.long(minutes=1.5)
@pytest.mark.slow
def test_rollout_benchmark_smoke(tmp_path: Path, demo_root: Path):
    config = demo_serving_dir(tmp_path, demo_root)
    out = tmp_path / "rollout.json"
    result = run_benchmark("rollout", "--smoke", "--model-config", str(config), "--json", str(out), timeout=240)
    assert "shadow adds" in result.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["server_alive_at_end"]
    split = report["split"]
    assert split["errors"] == 0 and sum(split["answered"].values()) == split["clients"] == 200
    assert set(split["answered"]) == {"stable", "canary"}
    for part, variants in (("shadow_search", 3), ("shadow_every_stage", 2)):
        measured = report[part]
        assert measured["errors"] == 0, measured["error_kinds"]
        assert [measured[name]["requests"] for name in measured if isinstance(measured[name], dict)
                and "requests" in measured[name]] == [8] * variants  # fmt: skip
    # Every request of the shadowed blocks sent its copies: compared, or dropped when too many ran at once.
    for part, copies in (("shadow_search", 8), ("shadow_every_stage", 8 * 4)):
        shadows = report[part]["shadows_not_compared"]
        assert shadows["failed"] == shadows["incomparable"] == shadows["skipped"] == 0
        assert report[part]["shadows_compared"] + shadows["dropped"] == copies
        assert report[part]["shadows_compared"] > 0
    assert set(report["targets"]) == {"split_error_points", "shadow_p50_overhead_ms", "errors"}
