"""Shared fixtures: the test servables, a serving folder per test, and backends of both kinds."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.serving.base import Backend
from app.serving.grpc_backend import GrpcBackend
from app.serving.local_backend import LocalBackend
from tests import servables
from tests.tf_serving_double import TFServingDouble

BACKEND_KINDS = ("local", "grpc")


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return servables.export_all(tmp_path_factory.mktemp("exported") / "serving_models")


def make_serving_dir(root: Path, exported: Path, config: str = servables.CONFIG) -> Path:
    """A config file and a private copy of the exported models; returns the config path."""
    shutil.copytree(exported, root / "serving_models")
    config_path = root / "serving_models.config"
    config_path.write_text(config, encoding="utf-8")
    return config_path


@pytest.fixture
def config_path(tmp_path: Path, exported_models: Path) -> Path:
    return make_serving_dir(tmp_path, exported_models)


BackendFactory = Callable[..., Backend]


def _factory(kind: str, closers: list) -> BackendFactory:
    def make(config_path: Path, *, poll_interval: float = 0.2, **backend_options) -> Backend:
        if kind == "local":
            backend: Backend = LocalBackend(config_path, poll_interval=poll_interval, **backend_options)
        else:
            double = TFServingDouble(config_path, poll_interval=poll_interval).start()
            closers.append(double)
            backend = GrpcBackend(double.address, **backend_options)
            backend.double = double  # type: ignore[attr-defined]  # tests reach the server's knobs
        closers.append(backend)
        return backend

    return make


def _close_all(closers: list) -> None:
    for item in reversed(closers):
        item.close()


@pytest.fixture(params=BACKEND_KINDS)
def make_backend(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """Builds a backend of the parametrised kind over a given config; closed after the test."""
    closers: list = []
    yield _factory(request.param, closers)
    _close_all(closers)


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def shared_backend(request: pytest.FixtureRequest, tmp_path_factory, exported_models: Path) -> Iterator[Backend]:
    """One backend per kind for tests that only read: the models are loaded once per module."""
    closers: list = []
    config = make_serving_dir(tmp_path_factory.mktemp("shared"), exported_models)
    yield _factory(request.param, closers)(config, poll_interval=0)
    _close_all(closers)


# -- the demo servables (exported once per session) and apps over them ------------------------------

PIPELINE_CONFIG = Path(__file__).resolve().parent.parent / "serving_models.config"
PIPELINE_FILE = PIPELINE_CONFIG.parent / "pipeline.toml"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo servables, exported once per test session; tests copy, never change, them."""
    from app.modelzoo.cli import export_models
    from app.pipeline_config import DEFAULT_PIPELINE

    root = tmp_path_factory.mktemp("demo") / "serving_models"
    written = export_models(root, echo=lambda _line: None)
    assert sorted(written) == sorted(DEFAULT_PIPELINE.servables)
    return root


def demo_serving_dir(root: Path, demo_root: Path) -> Path:
    """The shipped serving_models.config and pipeline.toml beside a private copy of the demo servables;
    returns the config."""
    shutil.copytree(demo_root, root / "serving_models")
    config = root / "serving_models.config"
    shutil.copy(PIPELINE_CONFIG, config)
    shutil.copy(PIPELINE_FILE, root / "pipeline.toml")
    return config


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def demo_app(request: pytest.FixtureRequest, tmp_path_factory, demo_root: Path) -> Iterator:
    """The gateway app over the demo servables, on the local backend or via gRPC to the protocol double."""
    from app import create_app

    config = demo_serving_dir(tmp_path_factory.mktemp("demo-app"), demo_root)
    # No rate limit: the suite sends bursts of quick requests from one address (tests/test_security.py tests it).
    settings, double = gateway_settings(request.param, config)
    app = create_app(settings)
    app.config["TESTING"] = True
    app.double = double  # the server's fault knobs, None on the local backend
    yield app
    app.extensions["serving"].close()
    if double is not None:
        double.close()


# -- benchmarks -------------------------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent.parent / "bench"


def gateway_settings(kind: str, config: Path) -> tuple[dict, TFServingDouble | None]:
    """Settings of a gateway over ``config`` on the ``kind`` backend ("local", or "grpc" through a protocol double
    started here: the caller stops it), without polling or a rate limit; and that double, or None."""
    settings = {"poll_interval": 0, "model_config": config, "rate_limit": ""}
    double = None
    if kind == "grpc":
        double = TFServingDouble(config, poll_interval=0).start()
        settings.update(backend="grpc", serving_target=double.address)
    return settings, double


def run_benchmark(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``bench/<script>`` (its smoke mode is the caller's to ask for) and require it to succeed."""
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=BENCH.parent,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
