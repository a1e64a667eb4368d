"""What the gateway does with a model config its server refuses: at start it does not start; on reload it serves on.

At start the embedded runtime refuses as tensorflow_model_server exits ("Failed to start server"):
the backend is not made, /readyz and /api/v1/models answer 503 with the reason, the runtime is not
made again for each request, and ``Serving.start()`` (gunicorn's post_worker_init) raises, so the
worker does not boot. On reload the previous config keeps serving, and /readyz and /api/v1/models
say why the new one is not in force, with the labels that are. Through the gRPC backend a refusal
is in TF Serving's log only, which the gateway cannot read: it shows the config file's labels.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from app import create_app
from app.config import PROJECT_ROOT
from app.errors import ServingUnavailable
from app.serving import local_backend
from tests.support import servables
from tests.support.double import TFServingDouble
from tests.support.fidelity import POLL, broken_copy_of, publish
from tests.support.harness import free_port
from tests.support.waiting import wait_for

REFUSED = "Request to assign label to version 2 of model half_plus, which is not currently available for inference"


def _pipeline_file(tmp_path: Path) -> Path:
    """Stages served by the test servables, so /api/v1/models lists half_plus and its labels."""
    path = tmp_path / "pipeline.toml"
    stages = {"detect": "half_plus", "encode": "words", "search": "words", "translate": "half_plus"}
    path.write_text("".join(f'[{stage}]\nservable = "{name}"\n' for stage, name in stages.items()), "utf-8")
    return path


def test_a_config_refused_at_start_stops_the_gateway_with_the_reason(config_path, tmp_path, monkeypatch):
    config_path.write_text(servables.labelled_config(), encoding="utf-8")
    made: list[object] = []
    runtime = local_backend.ModelRuntime

    def counted(*args, **kwargs):
        made.append(args)
        return runtime(*args, **kwargs)

    monkeypatch.setattr(local_backend, "ModelRuntime", counted)
    settings = {"model_config": config_path, "pipeline_config": _pipeline_file(tmp_path), "rate_limit": ""}
    app = create_app(settings | {"poll_interval": 0, "allow_labels_for_unavailable": False})
    client = app.test_client()
    try:
        for _ in range(3):
            ready = client.get("/readyz")
            assert ready.status_code == 503 and REFUSED in ready.json["error"]
            models = client.get("/api/v1/models")
            assert models.status_code == 503 and models.headers["Retry-After"] == "5"
            assert models.json["error"]["code"] == "serving_unavailable" and REFUSED in models.json["error"]["message"]
        with pytest.raises(ServingUnavailable, match="version 2 of model half_plus"):
            app.extensions["serving"].start()  # gunicorn's post_worker_init: the worker fails to boot
        assert len(made) == 1  # tried once, not once per request
    finally:
        app.extensions["serving"].close()


def test_a_config_refused_on_reload_keeps_serving_and_says_why(config_path, tmp_path):
    settings = {"model_config": config_path, "pipeline_config": _pipeline_file(tmp_path), "rate_limit": ""}
    app = create_app(settings | {"poll_interval": POLL})
    client = app.test_client()

    def half_plus() -> dict:
        body = client.get("/api/v1/models").json
        return next(entry for entry in body["servables"] if entry["name"] == "half_plus") | {"_body": body}

    try:
        assert half_plus()["_body"]["model_config"] == {"refused": None}
        misfits = client.get("/readyz").json["misfits"]  # the test servables do not fit the pipeline's stages
        config_path.write_text(servables.labelled_config({"stable": 1}), encoding="utf-8")
        wait_for(lambda: half_plus()["labels"] == {"stable": 1}, 5, "stable given")
        # Moving a label onto a version that is not there: refused even with the flag (the gateway's default).
        config_path.write_text(servables.labelled_config({"stable": 7}), encoding="utf-8")
        wait_for(lambda: half_plus()["_body"]["model_config"]["refused"], 5, "the edit refused")
        entry = half_plus()
        assert "version 7 of model half_plus" in entry["_body"]["model_config"]["refused"]
        assert entry["labels"] == {"stable": 1}  # the labels in force, not the file's
        assert [v["labels"] for v in entry["versions"]] == [[], ["stable"]]  # newest first: 2, then 1
        ready = client.get("/readyz")
        # Every servable still serves: unready only for the misfits it had before the edit.
        assert ready.status_code == 503 and ready.json["misfits"] == misfits
        assert ready.json["servables"] == {
            "half_plus": {"available": True, "versions": [2, 1]},
            "words": {"available": True, "versions": [1]},
        }
        assert "version 7 of model half_plus" in ready.json["model_config"]["refused"]
        search = client.get("/api/v1/models")
        assert search.status_code == 200
    finally:
        app.extensions["serving"].close()


def test_through_grpc_the_gateway_shows_the_files_labels_and_no_refusal_it_cannot_see(config_path, tmp_path):
    double = TFServingDouble(config_path, poll_interval=POLL).start()
    settings = {"model_config": config_path, "pipeline_config": _pipeline_file(tmp_path), "rate_limit": ""}
    app = create_app(settings | {"backend": "grpc", "serving_target": double.address})
    client = app.test_client()
    try:
        config_path.write_text(servables.labelled_config({"stable": 7}), encoding="utf-8")
        wait_for(lambda: double.runtime.config_refusal is not None, 5, "TF Serving refused the edit")
        body = client.get("/api/v1/models").json
        entry = next(entry for entry in body["servables"] if entry["name"] == "half_plus")
        assert entry["labels"] == {"stable": 7} and "model_config" not in body
        ready = client.get("/readyz")  # as above: every servable serves, the test servables misfit the stages
        assert ready.status_code == 503 and ready.json["misfits"] and "model_config" not in ready.json
        assert {name: entry["available"] for name, entry in ready.json["servables"].items()} == {
            "half_plus": True,
            "words": True,
        }
    finally:
        app.extensions["serving"].close()
        double.close()


# -- under gunicorn, as `make run` and the image start it ---------------------------------------------


def _gunicorn_until_it_exits(env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run the gateway under gunicorn with gunicorn.conf.py; its exit status and log once it stops by itself."""
    command = [sys.executable, "-m", "gunicorn", "--config", str(PROJECT_ROOT / "gunicorn.conf.py"), "app:create_app()"]
    environ = {**os.environ, "GATEWAY_BIND": f"127.0.0.1:{free_port()}", "GATEWAY_RATE_LIMIT": "", **env}
    process = subprocess.Popen(
        command, cwd=PROJECT_ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"gunicorn still running after {timeout} s:\n{output[-3000:]}")
    return process.returncode, output


@pytest.mark.slow
def test_under_gunicorn_a_refused_config_stops_the_gateway_with_the_reason(config_path):
    config_path.write_text(servables.labelled_config(), encoding="utf-8")
    env = {"GATEWAY_MODEL_CONFIG": str(config_path), "GATEWAY_ALLOW_LABELS_FOR_UNAVAILABLE": "0"}
    status, log = _gunicorn_until_it_exits(env)
    assert status == 3, log[-3000:]  # gunicorn's "Worker failed to boot"
    assert REFUSED in log and "Worker failed to boot" in log


@pytest.mark.slow
def test_under_gunicorn_load_retries_longer_than_the_worker_timeout_still_end_with_the_reason(config_path):
    """Retries 3 x 1 s against a 1 s worker timeout: the worker is still booting (gunicorn times out only workers
    that have begun to serve), so it is not killed, and the load's failure stops the gateway with its reason."""
    base = config_path.parent / "serving_models" / "half_plus"
    broken = publish(base, 3, broken_copy_of(base / "2"))
    env = {
        "GATEWAY_MODEL_CONFIG": str(config_path),
        "GATEWAY_MAX_LOAD_RETRIES": "3",
        "GATEWAY_LOAD_RETRY_INTERVAL": "1",
        "GATEWAY_WORKER_TIMEOUT": "1",
    }
    status, log = _gunicorn_until_it_exits(env)
    assert status == 3, log[-3000:]
    assert "WORKER TIMEOUT" not in log
    assert f"{{{{name: half_plus_latest version: 3}} due to error: DATA_LOSS: Can't parse {broken}" in log
