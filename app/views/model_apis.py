"""What the two model-level surfaces share: TF Serving's REST API (/v1) and the Open Inference Protocol (/v2).

Both read a request body bounded by ``GATEWAY_MAX_UPLOAD_BYTES`` (413) and ``GATEWAY_UPLOAD_TIMEOUT`` (408),
answer every error, whoever raises it (the API key check, the rate limit, a size limit, a view), as
``{"error": "<message>"}``, and count their requests per surface, servable and method beside the gateway's
per-route metrics, the servable label bounded as ``app.metrics.ServableLabels`` bounds it (a client cannot
grow the label set with made-up model names).
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import PathConverter

from app.errors import GatewayError, PayloadTooLarge
from app.metrics import LATENCY_BUCKETS, ServableLabels
from app.views.common import _upload_deadline, settings
from app.views.errors import error_body

_METRICS = "model_api_metrics"
_KNOWN = "model_api_servables"


class AnyPath(PathConverter):
    """The rest of a path, whatever it holds: Werkzeug's ``path`` stops at a newline (a decoded %0A), and a
    surface answers for every path under its prefix."""

    regex = "(?s:.+)"
    part_isolating = False  # it spans slashes (Werkzeug guesses otherwise from a regex without "/")


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
            "Inference Protocol) by surface, servable, method and HTTP status",
            ["surface", "servable", "method", "status"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_model_api_request_duration_seconds", "Time to answer a request to a model surface",
            ["surface", "servable", "method"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip


def protocol_surface(blueprint: Blueprint) -> None:
    """Make ``blueprint`` a model surface: ``{"error": ...}`` bodies, its requests counted, ``<everything:...>`` in its
    rules. Call it before the blueprint's first rule."""
    blueprint.record_once(lambda state: state.app.url_map.converters.setdefault("everything", AnyPath))
    error_body(blueprint, lambda error: {"error": error.message})
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
    """The raw request body, under the upload deadline (408) and the body size limit (413)."""
    with _upload_deadline(req):
        try:
            return req.get_data(cache=False)
        except RequestEntityTooLarge as exc:
            raise PayloadTooLarge(f"the request is larger than {settings().max_upload_bytes:,} bytes") from exc
