"""Smoke run of bench/codec.py: a few repetitions, so a broken codec benchmark is noticed by `make test`."""

from __future__ import annotations

import json

import pytest

from tests.support.gateway import run_benchmark


@pytest.mark.slow
def test_codec_benchmark_smoke(tmp_path):
    out = tmp_path / "codec.json"
    result = run_benchmark("codec", "--smoke", "--json", str(out))
    assert "1.5x target" in result.stdout
    results = json.loads(out.read_text())
    assert results["smoke"] and results["all_agree"]
    rows = {(row["case"], row["tensor"], row["form"]) for row in results["rows"]}
    for tensor in ("float32[1,256,256,3]", "uint8[1,1024,1024,3]"):
        assert {("encode", tensor, "request bytes"), ("decode", tensor, "content"), ("decode", tensor, "field")} <= rows
    for row in results["rows"]:
        assert row["methods"]["ours"]["p50_ms"] > 0 and row["methods"]["tf"]["p50_ms"] > 0
        assert row["ratio"] == pytest.approx(row["methods"]["tf"]["p50_ms"] / row["methods"]["ours"]["p50_ms"])
