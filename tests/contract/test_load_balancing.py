"""Client-side load balancing: one gRPC backend spreads calls over TF Serving replicas and survives one dying."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.serving.base import ModelRef
from app.serving.grpc_backend import GrpcBackend
from app.serving.runtime import ModelRuntime
from tests.support.double import TFServingDouble
from tests.support.gateway import make_serving_dir
from tests.support.waiting import wait_for

X = np.arange(8, dtype=np.float32)
REF = ModelRef("half_plus", version=1)
CALLS = 300


@pytest.fixture
def replicas(tmp_path: Path, exported_models: Path) -> Iterator[list[TFServingDouble]]:
    """Three replicas on three loopback addresses, serving one shared set of loaded models."""
    runtime = ModelRuntime(make_serving_dir(tmp_path, exported_models), poll_interval=0)
    doubles = []
    for index in range(3):
        double = TFServingDouble(runtime=runtime, name=f"replica{index}")
        doubles.append(double.start())
    yield doubles
    for double in doubles:
        double.close()
    runtime.close()


def _target(doubles: list[TFServingDouble]) -> str:
    return ",".join(d.address for d in doubles)


def _warm_up(backend: GrpcBackend, doubles: list[TFServingDouble]) -> None:
    """Call until every replica has answered once: round_robin only uses subchannels that are connected."""

    def calls_after_one_more() -> list[int]:
        backend.predict(REF, {"x": X})
        return [d.calls["Predict"] for d in doubles]

    wait_for(calls_after_one_more, 5, "Predict calls at every replica", until=all, every=0)
    for double in doubles:
        double.calls.clear()


def test_calls_spread_evenly_over_replicas(replicas):
    with GrpcBackend(_target(replicas)) as backend:
        assert backend.balanced
        _warm_up(backend, replicas)
        for _ in range(CALLS):
            np.testing.assert_allclose(backend.predict(REF, {"x": X})["y"], 0.5 * X + 2)
    counts = [d.calls["Predict"] for d in replicas]
    assert sum(counts) == CALLS
    assert all(70 <= count <= 130 for count in counts), counts


def test_one_replica_stopped_mid_run_loses_no_call(replicas):
    failures: list[BaseException] = []
    done = 0
    lock = threading.Lock()
    with GrpcBackend(_target(replicas), max_attempts=5) as backend:
        _warm_up(backend, replicas)

        def call(_: int) -> None:
            nonlocal done
            try:
                out = backend.predict(REF, {"x": X})
                np.testing.assert_allclose(out["y"], 0.5 * X + 2)
            except BaseException as exc:  # every failure counts
                failures.append(exc)
            with lock:
                done += 1
                if done == CALLS // 2:
                    replicas[1].stop()

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(call, range(CALLS)))
    assert failures == []
    assert done == CALLS
    counts = [d.calls["Predict"] for d in replicas]
    # The stopped replica answered only in the first half; the others took the rest.
    assert counts[1] < CALLS // 2
    assert counts[0] + counts[2] >= CALLS // 2


def test_a_replica_stopped_with_calls_in_flight_loses_none(replicas):
    """A replica that stops while it holds calls cancels them (CANCELLED): each is answered by another replica."""
    slow, others = replicas[0], replicas[1:]
    with GrpcBackend(_target(replicas), max_attempts=3, timeout=20.0) as backend:
        _warm_up(backend, replicas)
        slow.delay = 5.0  # the calls round_robin sends it wait there until it stops
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = [pool.submit(backend.predict, REF, {"x": X}) for _ in range(6)]
            slow.wait_for_calls("Predict", 1)
            slow.stop(grace=0.5)  # it drains for half a second, then cancels what it still holds (CANCELLED)
            for answer in answers:
                np.testing.assert_allclose(answer.result(timeout=20)["y"], 0.5 * X + 2)
    assert slow.calls["Predict"] >= 1  # it held calls when it stopped, and answered none of them
    assert sum(d.calls["Predict"] for d in others) == 6
