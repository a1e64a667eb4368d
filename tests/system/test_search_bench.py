"""Smoke runs of the IVF search benchmark (``python -m bench.search --smoke --ivf`` and ``--crossover``): tiny sizes,
so a broken benchmark is noticed by the suite; the figures themselves say nothing at these sizes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def run_bench(*args: str, timeout: float = 480) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "bench.search", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_ivf_benchmark_runs_at_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "ivf.json"
    result = run_bench("--smoke", "--ivf", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["k"] == 10
    build = report["build"]
    assert build["lists"] >= 1 and build["scan_dims"] >= 1 and build["build_seconds"] > 0
    ours = report["at_target"]["ivf"]
    assert 0.0 <= ours["unseen"] <= 1.0 and 0.0 <= ours["enrolled"] <= 1.0
    assert {"ivf @ target B=1", "ivf @ target B=8", "ivf @ default B=1"} <= set(report["timings"])
    assert all(row["p99_ms"] >= row["p50_ms"] > 0 for row in report["timings"].values())
    assert report["memory"]["loaded_cost_mb"] > 0
    if importlib.util.find_spec("faiss") is not None:
        assert "faiss IVF,Flat (our lists)" in report["at_target"]
        assert "ivf / faiss IVF,Flat (our lists) B=1" in result.stdout
    assert "recall@10 against exact search" in result.stdout


@pytest.mark.long(minutes=2)
def test_the_crossover_benchmark_runs_at_smoke_size(tmp_path: Path) -> None:
    out = tmp_path / "crossover.json"
    run_bench("--smoke", "--crossover", "--json", str(out))
    report = json.loads(out.read_text())
    assert [row["n"] for row in report["crossover"]] == [2_000, 6_000]
    assert all(row["ivf_p50_ms"] > 0 and row["exact_p50_ms"] > 0 for row in report["crossover"])
