"""What the two model-level surfaces share: TF Serving's REST API (/v1) and the Open Inference Protocol (/v2).

Both read a request body bounded by ``GATEWAY_MAX_UPLOAD_BYTES`` (413) and ``GATEWAY_UPLOAD_TIMEOUT`` (408),
answer every error, whoever raises it (the API key check, the rate limit, a size limit, a view), as
``{"error": "<message>"}``, and count their requests per surface, servable and method beside the gateway's
per-route metrics, the servable label bounded as ``app.web.metrics.ServableLabels`` bounds it (a client cannot
grow the label set with made-up model names). Both type a request by its signature's tensors from the
backend's cached metadata (:func:`signature_tensors`), and answer their metadata endpoints with the
SignatureDefs asked afresh (:func:`signature_defs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from app.errors import BadInput, GatewayError, UnknownSignature
from app.serving import tensors
from app.serving.base import Backend, ModelRef
from app.serving.protos.tensorflow_serving.apis import get_model_metadata_pb2
from app.views.common import upload_deadline
from app.web.errors import ProtocolError as ProtocolErrorBody
from app.web.errors import error_body
from app.web.metrics import LATENCY_BUCKETS, ServableLabels
from app.web.operations import any_path_converter

_METRICS = "model_api_metrics"
_KNOWN = "model_api_servables"


class ProtocolError(GatewayError):
    """An error answered with the status its protocol gives it (TF Serving's REST API maps gRPC codes its way)."""

    code = "protocol_error"

    def __init__(self, status_code: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status_code = status_code


class ModelApiMetrics:
    """Requests to the model surfaces and their time, by surface, servable and method."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_model_api_requests_total",
            "Requests to the model surfaces (tfserving_rest: TF Serving's REST API, inference_v2: the Open "
            "Inference Protocol, seldon: Seldon's protocol) by surface, servable, method and HTTP status",
            ["surface", "servable", "method", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_model_api_request_duration_seconds", "Time to answer a request to a model surface",
            ["surface", "servable", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip


def protocol_surface(blueprint: Blueprint, body: Callable[[GatewayError], dict] | None = None) -> None:
    """Make ``blueprint`` a model surface: its errors in its protocol's body (default ``{"error": ...}``), its
    requests counted, ``<everything:...>`` in its rules. Call it before the blueprint's first rule."""
    any_path_converter(blueprint)
    error_body(blueprint, body or (lambda error: ProtocolErrorBody(error=error.message).model_dump()))
    blueprint.record_once(_init_app)
    blueprint.after_request(_count)


def _init_app(state) -> None:
    app: Flask = state.app
    if _METRICS not in app.extensions:
        app.extensions[_METRICS] = ModelApiMetrics(app.extensions["metrics"].registry)
        app.extensions[_KNOWN] = ServableLabels()


def name_request(servable: str, method: str) -> None:
    """Say what the request asks of which servable, for the metrics."""
    g.model_api = (servable, method)


def _count(response: Response) -> Response:
    app = current_app
    servable, method = g.get("model_api", ("", "other"))
    labels: ServableLabels = app.extensions[_KNOWN]
    if servable and response.status_code < 400:
        labels.answered(servable)
    label = labels.label(servable) if servable else ServableLabels.OTHER
    metrics: ModelApiMetrics = app.extensions[_METRICS]
    surface = request.blueprint or "unknown"
    metrics.requests.labels(surface, label, method, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.latency.labels(surface, label, method).observe(time.perf_counter() - started)
    return response


def read_body(req: Request) -> bytes:
    """The raw request body, under the upload deadline (408) and the body size limit (413, as the app's handler
    words it for every route)."""
    with upload_deadline(req):
        return req.get_data(cache=False)


@dataclass(frozen=True)
class SignatureTensors:
    """What a request to a signature is typed by: its inputs and outputs, each alias with its TF DataType."""

    inputs: Mapping[str, int]
    outputs: Mapping[str, int]


class SignatureNotFound(UnknownSignature):
    """The version a ref resolves to has no signature of that name; ``signatures`` are those it has, its own included
    (each surface words the answer its way)."""

    def __init__(self, ref: ModelRef, version: int, signatures: list[str]) -> None:
        super().__init__(f"{ref.name} version {version} has no signature {ref.signature!r}")
        self.version = version
        self.signatures = signatures


def signature_defs(
    backend: Backend, ref: ModelRef
) -> tuple[get_model_metadata_pb2.GetModelMetadataResponse, get_model_metadata_pb2.SignatureDefMap]:
    """GetModelMetadata, asked afresh: the version the ref resolves to, and every SignatureDef it has."""
    response = backend.get_model_metadata(ModelRef(ref.name, ref.version, ref.label))
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    return response, signature_map


def signature_tensors(backend: Backend, ref: ModelRef, *, own_signatures: bool) -> SignatureTensors:
    """The tensors of the ref's signature, from the backend's cached metadata: no server call per request.

    ``own_signatures``: whether the SavedModel's own signatures (``__saved_model_init_op``) can be named, as TF
    Serving lets them be. SignatureNotFound when the version has no such signature.
    """
    try:
        found = backend.metadata(ref)
    except (UnknownSignature, BadInput):
        # Not in the cached metadata: no signature of that name, one of the SavedModel's own (left out there), or a
        # tensor of a dtype no array here holds. The server's SignatureDefs answer, as TF Serving's would.
        pass
    else:
        return SignatureTensors(
            {alias: tensors.datatype_of(spec.dtype) for alias, spec in found.inputs.items()},
            {alias: tensors.datatype_of(spec.dtype) for alias, spec in found.outputs.items()},
        )
    response, signature_map = signature_defs(backend, ref)
    signature = signature_map.signature_def.get(ref.signature)
    if signature is None or (ref.signature.startswith("__") and not own_signatures):
        raise SignatureNotFound(ref, response.model_spec.version.value, sorted(signature_map.signature_def))
    return SignatureTensors(
        {alias: info.dtype for alias, info in signature.inputs.items()},
        {alias: info.dtype for alias, info in signature.outputs.items()},
    )
