"""The gRPC backend under faults: deadlines, a stopped or restarted server, UNAVAILABLE, large messages."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from app.errors import BadInput, DeadlineExceeded, ModelFailure, ServingUnavailable
from app.serving.base import ModelRef
from app.serving.grpc_backend import GrpcBackend, channel_target, lost_by_the_server
from tests.support import servables
from tests.support.double import TFServingDouble
from tests.support.gateway import make_serving_dir
from tests.support.waiting import wait_for

X = np.arange(4, dtype=np.float32)
REF = ModelRef("half_plus")


@pytest.fixture(scope="module")
def double(tmp_path_factory, exported_models: Path) -> Iterator[TFServingDouble]:
    config = make_serving_dir(tmp_path_factory.mktemp("faults"), exported_models)
    with TFServingDouble(config, poll_interval=0) as server:
        yield server


@pytest.fixture
def server(double: TFServingDouble) -> Iterator[TFServingDouble]:
    """The module's double, with its knobs reset after each test."""
    double.reset()
    yield double
    double.reset()


@pytest.fixture
def client(server: TFServingDouble) -> Iterator[GrpcBackend]:
    backend = GrpcBackend(server.address, timeout=5.0)
    yield backend
    backend.close()


def test_deadline_exceeded_within_deadline_plus_20_percent(server, client):
    server.delay = 2.0
    deadline = 0.5
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as caught:
        client.predict(REF, {"x": X}, timeout=deadline)
    took = time.monotonic() - started
    assert took <= deadline * 1.2
    assert caught.value.status_code == 504
    assert "0.5s" in caught.value.message


def test_default_deadline_comes_from_config(server):
    server.delay = 1.0
    with GrpcBackend(server.address, timeout=0.3) as backend:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            backend.predict(REF, {"x": X})
        assert time.monotonic() - started <= 0.3 * 1.2


def test_stopped_server_is_503_fast(server, client):
    client.predict(REF, {"x": X})  # connected first
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServingUnavailable) as caught:
        client.predict(REF, {"x": X})
    assert time.monotonic() - started < 1.0
    assert caught.value.status_code == 503
    assert caught.value.retry_after is not None


def test_never_started_server_is_503_fast():
    with GrpcBackend("127.0.0.1:1", timeout=5.0) as backend:
        started = time.monotonic()
        with pytest.raises(ServingUnavailable):
            backend.predict(REF, {"x": X})
        assert time.monotonic() - started < 1.0


def test_restarted_server_same_client_recovers(server, client):
    np.testing.assert_allclose(client.predict(REF, {"x": X})["y"], 0.5 * X + 3)
    server.stop()
    with pytest.raises(ServingUnavailable):
        client.predict(REF, {"x": X})
    server.start()  # same port

    def answer() -> dict | ServingUnavailable:
        try:
            return client.predict(REF, {"x": X})
        except ServingUnavailable as exc:
            return exc

    out = wait_for(answer, 5.0, "the client recovered", until=lambda got: isinstance(got, dict), every=0.05)
    np.testing.assert_allclose(out["y"], 0.5 * X + 3)


def test_unavailable_is_retried(server, client):
    before = server.calls["Predict"]
    server.fail_next(2, grpc.StatusCode.UNAVAILABLE)
    np.testing.assert_allclose(client.predict(REF, {"x": X})["y"], 0.5 * X + 3)
    assert server.calls["Predict"] - before == 3


def test_retries_stop_after_max_attempts(server, client):
    before = server.calls["Predict"]
    server.fail_with = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ServingUnavailable, match="injected UNAVAILABLE"):
        client.predict(REF, {"x": X})
    assert server.calls["Predict"] - before == client.max_attempts


def test_a_call_the_server_cancels_in_flight_is_retried(server, client):
    before = server.calls["Predict"]
    server.cancel_next(1)  # as a replica shutting down with the call in flight answers it: CANCELLED
    np.testing.assert_allclose(client.predict(REF, {"x": X})["y"], 0.5 * X + 3)
    assert server.calls["Predict"] - before == 2


def test_metadata_and_status_cancelled_by_the_server_are_retried(server, client):
    server.cancel_next(2)
    assert client.model_status("half_plus")[0].state == "AVAILABLE"
    assert client.get_model_metadata(ModelRef("half_plus", version=1)).model_spec.version.value == 1


def test_the_clients_own_deadline_is_not_retried(server):
    server.delay = 1.0
    with GrpcBackend(server.address, timeout=5.0, max_attempts=5) as backend:
        before = server.calls["Predict"]
        with pytest.raises(DeadlineExceeded):
            backend.predict(REF, {"x": X}, timeout=0.3)
    assert server.calls["Predict"] - before == 1


@pytest.mark.parametrize(
    ("code", "details", "lost"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Connection reset by peer", True),
        (grpc.StatusCode.CANCELLED, "Cancelled", True),
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2", True),
        (grpc.StatusCode.UNKNOWN, "Stream removed", True),
        (grpc.StatusCode.INTERNAL, "Matrix size-incompatible: In[0]: [1,3], In[1]: [4,1]", False),  # the model's
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False),  # the client's own deadline
        (grpc.StatusCode.INVALID_ARGUMENT, "input size does not match signature", False),
    ],
)
def test_what_counts_as_lost_by_the_server(code, details, lost):
    assert lost_by_the_server(code, details) is lost


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, BadInput),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ServingUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.INTERNAL, ModelFailure),
    ],
)
def test_other_codes_are_not_retried(server, client, code, error):
    before = server.calls["Predict"]
    server.fail_next(1, code)
    with pytest.raises(error):
        client.predict(REF, {"x": X})
    assert server.calls["Predict"] - before == 1


def test_fifty_megabyte_tensor_round_trips(server, client):
    big = np.random.default_rng(0).random(13_500_000, dtype=np.float32)  # 54 MB each way
    out = client.predict(ModelRef("identity"), {"x": big}, timeout=60)
    np.testing.assert_array_equal(out["y"], big)


def test_metadata_is_cached_per_version(server, client):
    before = server.calls["GetModelMetadata"]
    for _ in range(3):
        assert client.metadata(ModelRef("half_plus", version=1)).version == 1
    assert server.calls["GetModelMetadata"] - before == 1


def test_latest_metadata_expires(server):
    with GrpcBackend(server.address, metadata_ttl=0.0) as backend:
        before = server.calls["GetModelMetadata"]
        backend.metadata(REF)
        backend.metadata(REF)
        assert server.calls["GetModelMetadata"] - before == 2


def test_version_label_is_sent_on_the_wire(server, client):
    if not server.runtime.labels("half_plus"):  # labels are given once their versions serve, as TF Serving wants
        servables.give_labels(server.runtime)
    np.testing.assert_allclose(client.predict(ModelRef("half_plus", label="stable"), {"x": X})["y"], 0.5 * X + 2)


def test_channel_is_reopened_after_fork(server, client, monkeypatch):
    client.predict(REF, {"x": X})
    first = client._channel
    import app.serving.grpc_backend as module

    real_pid = module.os.getpid()
    monkeypatch.setattr(module.os, "getpid", lambda: real_pid + 1)
    client.predict(REF, {"x": X})
    assert client._channel is not first


@pytest.mark.parametrize(
    ("target", "expected", "balanced"),
    [
        ("localhost:8500", "localhost:8500", False),
        ("dns:///serving:8500", "dns:///serving:8500", True),
        ("127.0.0.1:1,127.0.0.2:2", "ipv4:127.0.0.1:1,127.0.0.2:2", True),
        (" 127.0.0.1:1 , 127.0.0.1:1 ,127.0.0.3:3", "ipv4:127.0.0.1:1,127.0.0.3:3", True),
        ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2", True),
    ],
)
def test_channel_target(target, expected, balanced):
    assert channel_target(target) == (expected, balanced)


@pytest.mark.parametrize("target", ["", "127.0.0.1,127.0.0.2:1", "127.0.0.1:1,[::1]:2", "no-such-host.invalid:1,a:2"])
def test_channel_target_rejects(target):
    with pytest.raises(ValueError):
        channel_target(target)


def test_round_robin_policy_only_for_several_servers():
    assert ("grpc.lb_policy_name", "round_robin") not in GrpcBackend("127.0.0.1:1").channel_options()
    assert ("grpc.lb_policy_name", "round_robin") in GrpcBackend("dns:///x:1").channel_options()
    options = dict(GrpcBackend("127.0.0.1:1").channel_options())
    assert options["grpc.max_receive_message_length"] >= 2**30
