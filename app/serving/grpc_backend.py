"""TF Serving client over gRPC: PredictionService and ModelService stubs, deadlines, retries, load balancing.

One channel per process, opened on first use (so a gunicorn worker opens its own
after the fork). Every call carries a deadline. Every call the backend makes is
idempotent (Predict, Classify, Regress, metadata, status), so a call lost by the
server side is tried again, on another replica where there is one, with jittered
exponential backoff while the deadline allows: UNAVAILABLE (no connection, a reset
connection), CANCELLED (a replica that shut down with the call in flight: this
client never cancels a call it is waiting for), and a stream the transport tore
down (RST_STREAM, GOAWAY). The client's own deadline is never retried, nor is any
answer of the model's. Several TF Serving replicas are spread over by gRPC's own
``round_robin`` policy: give ``dns:///serving:8500`` (re-resolved by gRPC) or a
comma-separated address list. Servables served elsewhere (a sharded gallery's shards,
each on its own TF Serving) get their own target: ``servable_targets`` maps a servable
name to one, with a channel per target. gRPC status codes become GatewayErrors here,
through ``app.errors``' one table.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf import message

from app.errors import BadInput, DeadlineExceeded, ModelFailure, from_serving_status
from app.serving import wire
from app.serving.base import (
    Backend,
    ModelRef,
    Served,
    SignatureMetadata,
    VersionStatus,
    metadata_from_signature_defs,
)
from app.serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MAX_MESSAGE_BYTES = 2**31 - 1  # TF Serving itself accepts up to 2 GB
# What gRPC's core says when the transport, not the server's code, ended a stream (it answers INTERNAL or UNKNOWN):
# a replica's connection torn down mid-call, which another replica can answer.
_TRANSPORT_LOSSES = ("RST_STREAM", "GOAWAY", "Stream removed", "Socket closed", "Connection reset")


def lost_by_the_server(code: grpc.StatusCode, details: str) -> bool:
    """Whether a call ended because the server side or the connection lost it (worth another replica), not because
    the model or the client said so. The backend never cancels a call it waits for, so CANCELLED is the server's."""
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        return True
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        sign in details for sign in _TRANSPORT_LOSSES
    )


def channel_target(target: str) -> tuple[str, bool]:
    """Turn the configured target into a gRPC target URI; the flag says whether to balance over several.

    ``host:port`` -> one server. ``dns:///host:port`` -> every address the name resolves to.
    ``a:port,b:port`` -> a static list; names in it are resolved once, here, because gRPC's
    ``ipv4:``/``ipv6:`` list schemes take addresses only.
    """
    target = target.strip()
    if not target:
        raise ValueError("the TF Serving target is empty")
    if target.startswith("dns:"):
        return target, True
    if "," not in target:
        return target, False
    families, addresses = set(), []
    for entry in (part.strip() for part in target.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"address {entry!r} in the TF Serving target has no port")
        host = host.strip("[]")
        for ip in _resolve(host, int(port)):
            family = ipaddress.ip_address(ip).version
            families.add(family)
            addresses.append(f"[{ip}]:{port}" if family == 6 else f"{ip}:{port}")
    if len(families) != 1:
        raise ValueError(f"the TF Serving address list {target!r} mixes IPv4 and IPv6 (or is empty)")
    scheme = "ipv6" if families == {6} else "ipv4"
    return f"{scheme}:{','.join(dict.fromkeys(addresses))}", True


def _resolve(host: str, port: int) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve TF Serving host {host!r}: {exc}") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def model_spec(ref: ModelRef) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=ref.name, signature_name=ref.signature)
    if ref.version is not None:
        spec.version.value = ref.version
    elif ref.label is not None:
        spec.version_label = ref.label
    return spec


@dataclass(frozen=True)
class _Stubs:
    """One channel to one TF Serving target and the stubs over it."""

    channel: grpc.Channel
    predict: prediction_service_pb2_grpc.PredictionServiceStub
    model: model_service_pb2_grpc.ModelServiceStub
    predict_wire: grpc.UnaryUnaryMultiCallable  # Predict with bytes in, bytes out


class GrpcBackend(Backend):
    """Backend that calls one TF Serving (or a set of replicas) over gRPC."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff_base: float = 0.05,
        backoff_max: float = 1.0,
        metadata_ttl: float = 30.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        async_workers: int = 8,
        servable_targets: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(async_workers=async_workers)
        self.target, self.balanced = channel_target(target)
        # servable -> the TF Serving that serves it, where that is not `target` (e.g. a shard on its own servers)
        self.servable_targets = {name: channel_target(other) for name, other in (servable_targets or {}).items()}
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.metadata_ttl = metadata_ttl
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._connections: dict[str, _Stubs] = {}  # by target: one channel each, opened on first use
        self._metadata_cache: dict[tuple[str, int | None, str | None], tuple[float, Any]] = {}

    # -- channel -------------------------------------------------------------------------------

    def channel_options(self, balanced: bool | None = None) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            # Reconnect soon after a server comes back, instead of gRPC's default 1 s .. 120 s backoff.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.dns_min_time_between_resolutions_ms", 5_000),
        ]
        if self.balanced if balanced is None else balanced:
            options.append(("grpc.lb_policy_name", "round_robin"))
        return options

    def _stubs(
        self, servable: str | None = None
    ) -> tuple[prediction_service_pb2_grpc.PredictionServiceStub, model_service_pb2_grpc.ModelServiceStub]:
        """The stubs of the channel that reaches ``servable`` (the default target's, for any other)."""
        stubs = self._connection(servable)
        return stubs.predict, stubs.model

    def _connection(self, servable: str | None) -> _Stubs:
        target, balanced = self.servable_targets.get(servable or "", (self.target, self.balanced))
        pid = os.getpid()
        with self._lock:
            if self._pid != pid:
                # After a fork the parent's channels are not ours to use or close: open fresh ones.
                self._connections = {}
                self._pid = pid
            stubs = self._connections.get(target)
            if stubs is None:
                channel = grpc.insecure_channel(target, options=self.channel_options(balanced))
                # predict_wire: no serializers, predict() hands gRPC the request bytes app.serving.wire wrote.
                stubs = _Stubs(
                    channel,
                    prediction_service_pb2_grpc.PredictionServiceStub(channel),
                    model_service_pb2_grpc.ModelServiceStub(channel),
                    channel.unary_unary(wire.PREDICT_METHOD),
                )
                self._connections[target] = stubs
            return stubs

    @property
    def _channel(self) -> grpc.Channel | None:
        """The default target's channel (None before the first call)."""
        stubs = self._connections.get(self.target) if self._pid == os.getpid() else None
        return None if stubs is None else stubs.channel

    def close(self) -> None:
        super().close()
        with self._lock:
            connections, self._connections = self._connections, {}
            owned = self._pid == os.getpid()
        if owned:
            for stubs in connections.values():
                stubs.channel.close()

    # -- calls ---------------------------------------------------------------------------------

    def _call(
        self, method: Callable[..., Any], request: message.Message | bytes, timeout: float | None, servable: str
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{servable}: no answer from TF Serving within {budget:g}s")
            try:
                return method(request, timeout=remaining)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
                details = (exc.details() if callable(getattr(exc, "details", None)) else None) or ""
                attempt += 1
                if lost_by_the_server(code, details) and attempt < self.max_attempts:
                    # Full jitter: spread the retries of many clients so they do not arrive together.
                    pause = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                    if time.monotonic() + pause < deadline:
                        time.sleep(pause)
                        continue
                if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    details = f"no answer from TF Serving within {budget:g}s ({details})"
                raise from_serving_status(code, details, servable=servable) from exc

    def predict(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        return self.predict_versioned(ref, inputs, timeout).outputs

    def predict_versioned(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> Served:
        # The request and response go through app.serving.wire, not protobuf messages: big tensors are copied once.
        request = wire.encode_predict_request(model_spec(ref), inputs)
        response = self._call(self._connection(ref.name).predict_wire, request, timeout, ref.name)
        try:
            return Served(wire.decode_predict_response(response), wire.response_version(response))
        except message.DecodeError as exc:
            raise ModelFailure(f"{ref.name}: TF Serving's PredictResponse does not parse ({exc})") from exc

    def metadata(self, ref: ModelRef) -> SignatureMetadata:
        key = (ref.name, ref.version, ref.label)
        cached = self._metadata_cache.get(key)
        if cached is None or cached[0] < time.monotonic():
            response = self.get_model_metadata(ref)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            if not response.metadata["signature_def"].Unpack(signature_map):
                raise BadInput(f"{ref.name}: TF Serving returned metadata without signature_def")
            model = metadata_from_signature_defs(
                ref.name, response.model_spec.version.value, signature_map.signature_def
            )
            # A pinned version never changes; "latest" and labels can move, so they expire.
            expiry = float("inf") if ref.version is not None else time.monotonic() + self.metadata_ttl
            self._metadata_cache[key] = cached = (expiry, model)
            self._metadata_cache[(ref.name, model.version, None)] = (float("inf"), model)
        return cached[1].signature(ref.signature)

    def get_model_metadata(self, ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataResponse:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(ModelRef(ref.name, ref.version, ref.label)),
            metadata_field=["signature_def"],
        )
        predict_stub, _ = self._stubs(ref.name)
        return self._call(predict_stub.GetModelMetadata, request, None, ref.name)

    def classify(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> classification_pb2.ClassificationResponse:
        request = classification_pb2.ClassificationRequest(model_spec=model_spec(ref), input=examples)
        predict_stub, _ = self._stubs(ref.name)
        return self._call(predict_stub.Classify, request, timeout, ref.name)

    def regress(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> regression_pb2.RegressionResponse:
        request = regression_pb2.RegressionRequest(model_spec=model_spec(ref), input=examples)
        predict_stub, _ = self._stubs(ref.name)
        return self._call(predict_stub.Regress, request, timeout, ref.name)

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        spec = model_pb2.ModelSpec(name=name)
        if version is not None:
            spec.version.value = version
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=spec)
        _, model_stub = self._stubs(name)
        response = self._call(model_stub.GetModelStatus, request, None, name)
        states = get_model_status_pb2.ModelVersionStatus.State
        return sorted(
            (
                VersionStatus(
                    version=entry.version,
                    state=states.Name(entry.state),
                    error_code=grpc.StatusCode.OK.name
                    if entry.status.error_code == 0
                    else _CODE_NAMES.get(entry.status.error_code, str(entry.status.error_code)),
                    error_message=entry.status.error_message,
                )
                for entry in response.model_version_status
            ),
            key=lambda status: status.version,
            reverse=True,  # newest first, as TF Serving lists them
        )


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
