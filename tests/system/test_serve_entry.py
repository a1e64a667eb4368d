"""`python -m app.serve` as KServe starts a transformer: its appended arguments pick the port, the workers and TF
Serving's gRPC address, an argument it does not know is reported, and the gateway answers through that address.

TF Serving here is the project's model server (app.model_server) over the demo servables.
"""

from __future__ import annotations

import json
import shutil
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import programs
from tests.support.double import TFServingDouble

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def double(tmp_path: Path, demo_root: Path) -> Iterator[tuple[TFServingDouble, Path]]:
    """The protocol double over the demo servables, with the shipped serving_models.config and pipeline.toml."""
    shutil.copytree(demo_root, tmp_path / "serving_models")
    for name in ("serving_models.config", "pipeline.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    with TFServingDouble(tmp_path / "serving_models.config", poll_interval=0) as server:
        yield server, tmp_path / "serving_models.config"


def get(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"http://{programs.LOOPBACK}:{port}{path}", data=data)
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def answers(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False


def test_kserves_arguments_start_the_gateway_on_its_port_against_its_predictor(
    double: tuple[TFServingDouble, Path], tmp_path: Path
) -> None:
    server, config = double
    port = programs.free_port()
    settings = {"GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_RATE_LIMIT": "", "GATEWAY_POLL_INTERVAL": "0"}
    argv = [
        "env", *(f"{key}={value}" for key, value in settings.items()), sys.executable, "-m", "app.serve",
        "--model_name", "portrait", "--predictor_host", server.address, "--http_port", str(port),
        "--workers", "1", "--protocol", "v1",
    ]  # fmt: skip
    program = programs.start("app-serve", argv, tmp_path, port, ready=lambda: answers(port), timeout=90)
    try:
        # Ready: every pipeline servable AVAILABLE behind the target app.serve made of --predictor_host.
        status, readiness = get(port, "/readyz")
        assert status == 200, readiness
        assert get(port, "/v1/models/face_detection")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        program.stop()
    log = program.log_tail(20000)
    assert "ignoring the argument '--protocol'" in log
    assert f"transformer of InferenceService 'portrait', TF Serving at {server.address}" in log
    assert f"Listening at: http://0.0.0.0:{port}" in log
