"""The gateway-alone benchmark: its smoke run (both backends, two revisions, every face) and the CPU figure it reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import harness
from tests.support.gateway import run_benchmark


def test_tree_cpu_seconds_counts_busy_children():
    spin = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\ninput()"
    before = harness.tree_cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while harness.tree_cpu_seconds(os.getpid()) - before < 0.45 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert harness.tree_cpu_seconds(os.getpid()) - before >= 0.45
    finally:
        child.communicate(b"\n")
    assert harness.tree_cpu_seconds(child.pid) == 0  # gone
    # Ended and waited for, its time stays in the tree's (as a recycled gunicorn worker's must): no drop.
    assert harness.tree_cpu_seconds(os.getpid()) - before >= 0.45


@pytest.mark.long(minutes=1.2)
@pytest.mark.slow
def test_gateway_benchmark_smoke(tmp_path: Path):
    out = tmp_path / "gateway.json"
    # HEAD as the revision to compare with: always there, and the same code, so both sides must answer alike.
    result = run_benchmark("gateway", "--smoke", "--before", "HEAD", "--json", str(out), timeout=900)
    assert "targets:" in result.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    assert set(report["runs"]) == {"local", "grpc"}
    for by_endpoint in report["runs"].values():
        assert set(by_endpoint) == {"api", "page"}
        for by_photo in by_endpoint.values():
            for by_clients in by_photo.values():
                for by_revision in by_clients.values():
                    assert set(by_revision) == {"before", "after"}
                    for summary in by_revision.values():
                        assert summary["errors"] == 0 and summary["ok"] == summary["requests"] > 0
                        assert 0 < summary["p50_ms"] <= summary["p95_ms"]
                        assert summary["cpu_ms_per_request"] > 0
                        assert summary["server_timing_ms"]["total"] > 0
    for by_clients in report["every_face"].values():
        for variants in by_clients.values():
            assert set(variants) == {"one_face", "every_face"}
            assert all(summary["errors"] == 0 for summary in variants.values())
    assert set(report["targets"]) == {
        "p50_1mp_api_c1_ms",
        "throughput_1mp_api_c8_after_over_before",
        "every_face_over_one_face_p50",
        "every_face_over_one_face_cpu",
        "errors",
    }
    assert report["targets"]["errors"]["met"] is True
