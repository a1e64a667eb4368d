"""The pipeline benchmark: its smoke run (gateway and tutorial baseline under gunicorn), its harness, and the
per-model-call timings in Server-Timing that its overhead figure is computed from."""

from __future__ import annotations

import functools
import http.server
import io
import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from PIL import Image
from werkzeug.formparser import parse_form_data
from werkzeug.test import EnvironBuilder

from tests.support import harness
from tests.support.gateway import demo_serving_dir, run_benchmark
from tests.support.waiting import wait_for

# -- harness -----------------------------------------------------------------------------------------


def test_percentiles_match_numpy():
    values = [0.3, 0.1, 0.9, 0.4, 0.2, 0.8, 0.5]
    assert harness.percentiles(values, (50, 95, 99)) == pytest.approx(np.percentile(values, [50, 95, 99]).tolist())
    assert all(math.isnan(v) for v in harness.percentiles([], (50,)))


def test_server_timing_is_parsed_into_milliseconds():
    header = "decode;dur=1.5, detect;dur=20, model-detect;dur=12.25, cache;desc=hit, bad;dur=x"
    assert harness.parse_server_timing(header) == {"decode": 1.5, "detect": 20.0, "model-detect": 12.25}


def test_multipart_body_is_what_a_server_parses():
    body, content_type = harness.multipart({"k": "3"}, {"image_file": ("a b.jpg", b"\xff\xd8 bytes", "image/jpeg")})
    environ = EnvironBuilder(method="POST", data=body, content_type=content_type).get_environ()
    _, form, files = parse_form_data(environ)
    upload = files["image_file"]
    with upload.stream:
        assert form["k"] == "3"
        assert upload.filename == "a b.jpg"
        assert upload.read() == b"\xff\xd8 bytes"


def test_astronaut_jpeg_has_the_asked_size():
    with Image.open(io.BytesIO(harness.astronaut_jpeg(0.25))) as image:
        assert image.format == "JPEG" and image.size == (500, 500)


def test_tree_rss_counts_children():
    alone = harness.tree_rss(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytes([1]) * (64 << 20); sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        rss = functools.partial(harness.tree_rss, child.pid)
        wait_for(rss, 5, "the child's 64 MiB resident", until=lambda resident: resident >= 64 << 20, every=0.1)
        assert harness.tree_rss(os.getpid()) >= alone + (64 << 20) * 0.9
    finally:
        child.communicate(b"")
    assert harness.tree_rss(child.pid) == 0  # gone


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 200 to even paths and 503 to odd ones."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        status = 200 if int(self.path.strip("/")) % 2 == 0 else 503
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_drive_sends_the_bounded_count_and_counts_errors():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = harness.drive(server.server_address[1], lambda _c, n: harness.Request("GET", f"/{n}"), 3, count=20)
    finally:
        server.shutdown()
        server.server_close()
    assert result.requests == 20
    assert len(result.latencies) == 10
    assert result.errors == {"HTTP 503": 10}
    summary = result.summary()
    assert summary["errors"] == 10 and summary["ok"] == 10 and summary["p50_ms"] > 0


# -- what the overhead figure is computed from -------------------------------------------------------


def test_result_page_times_each_model_call(demo_app: Flask):
    photo = harness.astronaut_jpeg(0.5)
    body, content_type = harness.multipart({"k": "3"}, {"image_file": ("a.jpg", photo, "image/jpeg")})
    response = demo_app.test_client().post("/detect_face/image", data=body, content_type=content_type)
    assert response.status_code == 200
    timing = harness.parse_server_timing(response.headers["Server-Timing"])
    for stage in ("detect", "encode", "search", "translate"):
        # The model call is part of its stage; the rest of the stage is the gateway's own work.
        assert 0 < timing[f"model-{stage}"] <= timing[stage]
    assert harness.model_critical_path(timing) <= timing["total"]


# -- the benchmark itself ----------------------------------------------------------------------------


@pytest.mark.long(minutes=1)
@pytest.mark.slow
def test_pipeline_benchmark_smoke(tmp_path: Path, demo_root: Path):
    config = demo_serving_dir(tmp_path, demo_root)
    out = tmp_path / "pipeline.json"
    result = run_benchmark("pipeline", "--smoke", "--model-config", str(config), "--json", str(out))
    assert "targets:" in result.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    for by_concurrency in report["runs"].values():
        for by_app in by_concurrency.values():
            assert set(by_app) == {"gateway", "baseline"}
            for summary in by_app.values():
                assert summary["errors"] == 0 and summary["ok"] == summary["requests"] > 0
                assert 0 < summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"]
    breakdown = report["gateway_breakdown"]
    first = next(iter(breakdown.values()))["1"]
    assert 0 < first["model_critical_path_median_ms"] < first["end_to_end_median_ms"]
    assert set(report["targets"]) == {
        "p50_12mp_c1_gateway_over_baseline",
        "throughput_c8_12mp_gateway_over_baseline",
        "throughput_c8_1mp_gateway_over_baseline",
        "errors_c8_gateway",
        "overhead_share_1mp",
        "p50_12mp_over_1mp_gateway",
    }
