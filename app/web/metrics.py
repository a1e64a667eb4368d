"""Prometheus metrics: HTTP requests by route and status, latency, in-flight requests, and every servable call.

Each app owns its registry (tests build many apps). With several gunicorn
workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty folder: prometheus-client
then keeps the values in files there and ``/metrics`` adds up every worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, TypeVar

import numpy as np
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from app.errors import GatewayError
from app.serving.base import Backend, ModelRef, Served, ServingConfigState, SignatureMetadata, VersionStatus
from app.serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    input_pb2,
    regression_pb2,
)

T = TypeVar("T")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    """The gateway's metric families, registered in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_http_requests_total", "HTTP requests answered", ["route", "method", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_http_request_duration_seconds", "Time to answer an HTTP request", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "gateway_http_requests_in_flight", "HTTP requests being answered now", registry=self.registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.servable_latency = Histogram(
            "gateway_servable_call_duration_seconds", "Time of one call to a servable", ["servable", "call"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.servable_errors = Counter(
            "gateway_servable_call_errors_total", "Failed calls to a servable, by gateway error code",
            ["servable", "call", "code"], registry=self.registry,
        )  # fmt: skip
        self.rollouts = RolloutMetrics(self.registry)

    def init_app(self, app: Flask) -> None:
        app.extensions["metrics"] = self
        app.before_request(self._before)
        app.after_request(self._after)
        app.teardown_request(self._teardown)

    def _before(self) -> None:
        g.metrics_started = time.perf_counter()
        self.in_flight.inc()

    def _after(self, response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        self.requests.labels(route, request.method, str(response.status_code)).inc()
        started = g.pop("metrics_started", None)
        if started is not None:
            self.latency.labels(route, request.method).observe(time.perf_counter() - started)
        return response

    def _teardown(self, _exc: BaseException | None) -> None:
        self.in_flight.dec()

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (summed over workers in multi-process mode)."""
        registry = self.registry
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST


# Shadow agreement: box IoU and top-k overlap in 0..1, latent distances of a few units, pixel differences to 255.
AGREEMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 255.0)


class RolloutMetrics:
    """Per stage and arm of a rollout: calls, their time and errors, fallbacks; per shadow: outcomes and agreement.

    Every stage is counted, a stage with no traffic split under the arm "default" and a pinned
    one under "pinned", so a canary's figures have a baseline beside them. Implements
    ``app.rollout.RolloutObserver``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_stage_requests_total", "Calls of a pipeline stage, by the arm that was asked",
            ["stage", "arm"], registry=registry,
        )  # fmt: skip
        self.errors = Counter(
            "gateway_stage_errors_total", "Failed calls of a pipeline stage, by arm and gateway error code",
            ["stage", "arm", "code"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "gateway_stage_duration_seconds", "Time of one call of a pipeline stage on an arm",
            ["stage", "arm"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.fallbacks = Counter(
            "gateway_stage_fallbacks_total", "Stage calls answered by another arm after an error (arm -> to)",
            ["stage", "arm", "to"], registry=registry,
        )  # fmt: skip
        self.shadows = Counter(
            "gateway_shadow_requests_total",
            "Shadow copies by outcome: compared, failed, incomparable, skipped (arm unavailable), dropped (too many)",
            ["stage", "arm", "shadow", "outcome"], registry=registry,
        )  # fmt: skip
        self.agreements = Histogram(
            "gateway_shadow_agreement",
            "A shadow's answer against the one returned: box_iou (detect), latent_distance (encode), "
            "topk_overlap (search), pixel_difference (translate)",
            ["stage", "arm", "shadow", "measure"], buckets=AGREEMENT_BUCKETS, registry=registry,
        )  # fmt: skip

    def stage_call(self, stage: str, arm: str, seconds: float | None, error: str | None) -> None:
        if seconds is not None or error is not None:
            self.requests.labels(stage, arm).inc()
        if seconds is not None:
            self.latency.labels(stage, arm).observe(seconds)
        if error is not None:
            self.errors.labels(stage, arm, error).inc()

    def fallback(self, stage: str, arm: str, to: str) -> None:
        self.fallbacks.labels(stage, arm, to).inc()

    def shadow_call(self, stage: str, arm: str, shadow: str, outcome: str) -> None:
        self.shadows.labels(stage, arm, shadow, outcome).inc()

    def agreement(self, stage: str, arm: str, shadow: str, measure: str, value: float) -> None:
        self.agreements.labels(stage, arm, shadow, measure).observe(value)


class ServableLabels:
    """The servable label of a metric, bounded: a servable's own name once the backend has answered for it, and
    before that only for the first ``spare`` distinct names, then "other". The model surfaces (/v1, /v2) take any
    name a client sends; made-up ones must not grow the label set without end."""

    OTHER = "other"

    def __init__(self, spare: int = 32) -> None:
        self.spare = spare
        self._answered: set[str] = set()
        self._unanswered: set[str] = set()
        self._lock = threading.Lock()

    def answered(self, name: str) -> None:
        if name not in self._answered:
            with self._lock:
                self._answered.add(name)

    def label(self, name: str) -> str:
        if name in self._answered or name in self._unanswered:
            return name
        with self._lock:
            if len(self._unanswered) < self.spare:
                self._unanswered.add(name)
                return name
        return self.OTHER


class InstrumentedBackend(Backend):
    """Wraps a backend: times every call per servable and counts failures by gateway error code."""

    def __init__(self, inner: Backend, metrics: GatewayMetrics) -> None:
        super().__init__()
        self.inner = inner
        self.metrics = metrics
        self.servables = ServableLabels()

    def _timed(self, servable: str, call: str, fn: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            result = fn(*args)
            self.servables.answered(servable)
            return result
        except GatewayError as exc:
            self.metrics.servable_errors.labels(self.servables.label(servable), call, exc.code).inc()
            raise
        finally:
            label = self.servables.label(servable)
            self.metrics.servable_latency.labels(label, call).observe(time.perf_counter() - started)

    def predict(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        return self._timed(ref.name, "predict", self.inner.predict, ref, inputs, timeout)

    def predict_versioned(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> Served:
        return self._timed(ref.name, "predict", self.inner.predict_versioned, ref, inputs, timeout)

    def metadata(self, ref: ModelRef) -> SignatureMetadata:
        return self._timed(ref.name, "metadata", self.inner.metadata, ref)

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        return self._timed(name, "status", self.inner.model_status, name, version)

    def get_model_metadata(self, ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return self._timed(ref.name, "metadata", self.inner.get_model_metadata, ref)

    def classify(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> classification_pb2.ClassificationResponse:
        return self._timed(ref.name, "classify", self.inner.classify, ref, examples, timeout)

    def regress(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> regression_pb2.RegressionResponse:
        return self._timed(ref.name, "regress", self.inner.regress, ref, examples, timeout)

    def config_state(self) -> ServingConfigState | None:
        return self.inner.config_state()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self.inner.submit(fn, *args)

    def close(self) -> None:
        super().close()
        self.inner.close()
