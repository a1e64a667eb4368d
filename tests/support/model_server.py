"""`python -m app.model_server` as the system tests run it: a subprocess on free loopback ports, and its models.

    with model_server(["--model_name=half_plus_two", f"--model_base_path={base}"], tmp_path) as server:
        status, body = server.rest("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]})
        stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())

The servables: TF Serving's half_plus_two (model_api_servables rebuilds it) and half_plus_three (rebuilt here from
the testdata SavedModel api_rest.md's examples use: y = 0.5x + 3, a predict signature and a regression signature
keyed "tensorflow/serving/regress"), and ``Sleeper``, a model that takes as long as it is told, after writing a
marker file: how a test knows a call is in flight on the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import requests
import tensorflow as tf

from tests.support.harness import free_port
from tests.support.programs import LOOPBACK, port_open

REPO = Path(__file__).resolve().parents[2]


def _staged(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def export_half_plus_three(path: Path) -> Path:
    """saved_model_half_plus_three's signatures: "serving_default" x -> y and "tensorflow/serving/regress" over
    tf.Examples with a float feature x, y = 0.5x + 3 (a TF1 graph, x fed directly by Predict)."""
    staging = _staged(path)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        a = tf.compat.v1.Variable(0.5, name="a")
        c = tf.compat.v1.Variable(3.0, name="c")
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example")
        parsed = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        parsed["x"].set_shape([None, 1])
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), c), name="y")
        utils = tf.compat.v1.saved_model
        signatures = {
            "serving_default": utils.predict_signature_def({"x": x}, {"y": y}),
            "tensorflow/serving/regress": utils.regression_signature_def(serialized, y),
        }
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(staging))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    staging.rename(path)
    return path


class Sleeper(tf.Module):
    """Writes "started" to the file ``marker`` names, then busies itself for ``seconds`` of wall time (tf.timestamp),
    and answers how long it took."""

    @tf.function(
        input_signature=[tf.TensorSpec([], tf.string, name="marker"), tf.TensorSpec([], tf.float32, name="seconds")]
    )
    def serve(self, marker, seconds):
        with tf.control_dependencies([tf.io.write_file(marker, "started")]):
            start = tf.timestamp()
        elapsed = tf.constant(0.0, tf.float64)
        while elapsed < tf.cast(seconds, tf.float64):
            elapsed = tf.timestamp() - start
        return {"waited": elapsed}


def export_sleeper(path: Path) -> Path:
    staging = _staged(path)
    module = Sleeper()
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    staging.rename(path)
    return path


# -- the server -------------------------------------------------------------------------------------------------


@dataclass
class RunningModelServer:
    process: subprocess.Popen
    grpc_port: int
    rest_port: int | None
    log_path: Path

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target)

    def rest(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> tuple[int, Any]:
        """One REST request; the answer's status and its JSON (the text when it is not JSON)."""
        assert self.rest_port is not None, "started without a REST port"
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        response = requests.request(method, f"http://{LOOPBACK}:{self.rest_port}{path}", data=data, timeout=timeout)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit status once it has stopped."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def command(arguments: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "app.model_server", *arguments]


def run_once(arguments: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the model server with ``arguments`` expecting it to exit by itself (a refused command line)."""
    return subprocess.run(
        command(arguments), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=_environment()
    )


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


@contextlib.contextmanager
def model_server(
    arguments: Sequence[str], log_dir: Path, *, rest: bool = True, ready_timeout: float = 180.0
) -> Iterator[RunningModelServer]:
    """The model server with ``arguments`` plus --port and --rest_api_port on free ports, until it serves (both ports
    accept); stopped (SIGTERM, then SIGKILL) on the way out."""
    grpc_port = free_port()
    rest_port = free_port() if rest else None
    ports = [f"--port={grpc_port}"] + ([f"--rest_api_port={rest_port}"] if rest_port else [])
    log_path = Path(log_dir) / f"model-server-{grpc_port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command([*ports, *arguments]),
            cwd=REPO,
            env=_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = RunningModelServer(process, grpc_port, rest_port, log_path)
    try:
        deadline = time.monotonic() + ready_timeout
        while not (port_open(grpc_port) and (rest_port is None or port_open(rest_port))):
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the model server did not serve within {ready_timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        server.kill()
