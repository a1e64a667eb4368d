"""What the TF Serving fidelity tests share: one server of either kind, its runtime, publishing versions, waiting.

A *server* here is what the gateway talks to: the embedded runtime behind a LocalBackend
("local"), or the protocol double behind a GrpcBackend ("grpc"). Both are built with the same
TF Serving flags (the runtime's keyword arguments), and each test states one expectation for both.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from app.errors import ServingStatus, wire_message
from app.serving.base import Backend
from app.serving.grpc_backend import GrpcBackend
from app.serving.local_backend import LocalBackend
from app.serving.runtime import ModelRuntime
from tests.support.double import TFServingDouble

KINDS = ("local", "grpc")
POLL = 0.1  # seconds between the servers' looks at the disk and at the config file
QUICK_RETRIES = {"max_load_retries": 2, "load_retry_interval": 0.2}  # TF Serving's 5 and 60 s, shortened


@dataclass
class Server:
    """One model server and the gateway backend in front of it."""

    kind: str
    backend: Backend
    runtime: ModelRuntime
    double: TFServingDouble | None = None

    def tf_serving_answer(self, request: predict_pb2.PredictRequest) -> tuple[grpc.StatusCode, str]:
        """What TF Serving answers a PredictRequest: OK and "" or the status code and the message on the wire.

        The double is asked over gRPC; the runtime is handed the same TensorProtos, parsed as the double
        parses them, and its status is put as TF Serving puts it on the wire.
        """
        if self.double is not None:
            with grpc.insecure_channel(self.double.address) as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                try:
                    stub.Predict(request, timeout=10)
                except grpc.RpcError as exc:
                    return exc.code(), exc.details()
            return grpc.StatusCode.OK, ""
        spec = request.model_spec
        choice = spec.WhichOneof("version_choice")
        try:
            self.runtime.predict(
                spec.name,
                dict(request.inputs),
                version=spec.version.value if choice == "version" else None,
                label=spec.version_label if choice == "version_label" else None,
                signature=spec.signature_name,
                output_filter=list(request.output_filter),
                decode=tf.make_ndarray,
            )
        except ServingStatus as exc:
            return exc.status, wire_message(exc.message)
        return grpc.StatusCode.OK, ""

    def close(self) -> None:
        self.backend.close()
        if self.double is not None:
            self.double.close()


def start_server(kind: str, config: Path, *, poll_interval: float = POLL, **flags: Any) -> Server:
    """A server of ``kind`` over ``config`` with TF Serving's ``flags``; raises what the server's start raises."""
    if kind == "local":
        backend = LocalBackend(config, poll_interval=poll_interval, **flags)
        return Server(kind, backend, backend.runtime)
    double = TFServingDouble(config, poll_interval=poll_interval, **flags).start()
    return Server(kind, GrpcBackend(double.address, timeout=10.0), double.runtime, double)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Starts servers for a test and closes them after it."""
    started: list[Server] = []

    def start(kind: str, config: Path, **options: Any) -> Server:
        server = start_server(kind, config, **options)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.close()


def publish(base: Path, version: int | str, fill: Callable[[Path], object]) -> Path:
    """A new version folder under ``base``, written aside and renamed into place whole, as a publisher must."""
    staging = base / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    final = base / str(version)
    staging.rename(final)
    return final


def copy_of(source: Path) -> Callable[[Path], None]:
    """Fills a version folder with a copy of another version."""

    def fill(target: Path) -> None:
        shutil.copytree(source, target, dirs_exist_ok=True)

    return fill


def broken_copy_of(source: Path) -> Callable[[Path], None]:
    """A copy whose saved_model.pb is not a SavedModel: what a half-written or corrupted upload looks like."""

    def fill(target: Path) -> None:
        shutil.copytree(source, target, dirs_exist_ok=True)
        (target / "saved_model.pb").write_bytes(b"\x0a\xff\xff\xff this is not a SavedModel")

    return fill


def states(backend: Backend, name: str) -> list[tuple[int, str, str]]:
    """(version, state, error code) as the server lists them, newest first."""
    return [(status.version, status.state, status.error_code) for status in backend.model_status(name)]
