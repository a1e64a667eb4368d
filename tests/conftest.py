"""Shared fixtures: the test servables, a serving folder per test, backends of both kinds, the demo app.

Nothing here imports TensorFlow at module level: the unit tier (tests/unit) loads this file too.
Helpers live in tests/support/; a test module imports those, never another test module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.gateway import BACKEND_KINDS, demo_serving_dir, gateway_settings, make_serving_dir
from tests.support.once import built_once

BackendFactory = Callable[..., Any]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a `long(minutes=...)` test go first, the longest first: the workers (pytest-xdist) start them
    at once and run the short files around them, instead of one worker finishing a long file alone at the end.
    A file keeps its own order."""
    minutes: dict = {}
    for item in items:
        marker = item.get_closest_marker("long")
        if marker is not None:
            minutes[item.path] = max(minutes.get(item.path, 0), marker.kwargs.get("minutes", 1))
    items.sort(key=lambda item: -minutes.get(item.path, 0))


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support import servables

    return built_once(tmp_path_factory, "exported", lambda folder: servables.export_all(folder / "serving_models")) / (
        "serving_models"
    )


@pytest.fixture
def config_path(tmp_path: Path, exported_models: Path) -> Path:
    return make_serving_dir(tmp_path, exported_models)


def _factory(kind: str, closers: list) -> BackendFactory:
    def make(config_path: Path, *, poll_interval: float = 0.2, **backend_options: Any) -> Any:
        from app.serving.grpc_backend import GrpcBackend
        from app.serving.local_backend import LocalBackend
        from tests.support.double import TFServingDouble

        if kind == "local":
            backend = LocalBackend(config_path, poll_interval=poll_interval, **backend_options)
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
def shared_backend(request: pytest.FixtureRequest, tmp_path_factory, exported_models: Path) -> Iterator[Any]:
    """One backend per kind for tests that only read: the models are loaded once per module."""
    closers: list = []
    config = make_serving_dir(tmp_path_factory.mktemp("shared"), exported_models)
    yield _factory(request.param, closers)(config, poll_interval=0)
    _close_all(closers)


# -- the demo servables (exported once per session) and apps over them ------------------------------


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The four demo servables, exported once per test run (every xdist worker reads the same); tests copy, never
    change, them."""
    from app.commands.models import export_models
    from app.pipeline_config import DEFAULT_PIPELINE

    def export(folder: Path) -> None:
        written = export_models(folder / "serving_models", echo=lambda _line: None)
        assert sorted(written) == sorted(DEFAULT_PIPELINE.servables)

    return built_once(tmp_path_factory, "demo", export) / "serving_models"


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def demo_app(request: pytest.FixtureRequest, tmp_path_factory, demo_root: Path) -> Iterator:
    """The gateway app over the demo servables, on the local backend or via gRPC to the protocol double."""
    from app import create_app

    config = demo_serving_dir(tmp_path_factory.mktemp("demo-app"), demo_root)
    # No rate limit: the suite sends bursts of quick requests from one address (tests/system/test_security.py tests it).
    settings, double = gateway_settings(request.param, config)
    app = create_app(settings)
    app.config["TESTING"] = True
    app.double = double  # the server's fault knobs, None on the local backend
    yield app
    app.extensions["serving"].close()
    if double is not None:
        double.close()


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def canary_app(request: pytest.FixtureRequest, tmp_path_factory, demo_root: Path) -> Iterator:
    """A gateway over the demo servables with stable and canary versions (tests/support/rollouts.py), on either
    backend, polling its pipeline file."""
    from tests.support.rollouts import canary_serving_dir, gateway

    with gateway(request.param, canary_serving_dir(tmp_path_factory.mktemp("canary"), demo_root)) as app:
        yield app
