"""Long-lived resources wired to the Flask app: the pipeline file, and the serving backend created in each process."""

from __future__ import annotations

import atexit
import logging
import os
import threading

from flask import Flask, current_app

from app.config import Settings
from app.errors import GatewayError, ServingUnavailable
from app.metrics import GatewayMetrics, InstrumentedBackend
from app.pipeline import Pipeline
from app.pipeline_check import PipelineMisfit, check_pipeline, misfits_of
from app.pipeline_config import PipelineConfig, load_pipeline_config
from app.serving.base import Backend

log = logging.getLogger(__name__)


def create_backend(settings: Settings) -> Backend:
    """The backend the settings name (imported on demand: only one is ever needed)."""
    if settings.backend == "grpc":
        from app.serving.grpc_backend import GrpcBackend

        return GrpcBackend(
            settings.serving_target,
            timeout=settings.timeout,
            max_attempts=settings.max_attempts,
            metadata_ttl=settings.metadata_ttl,
            async_workers=settings.async_workers,
        )
    from app.logs import import_tensorflow

    import_tensorflow(settings.log_level.upper())  # before the runtime imports it: its start-up noise filtered
    from app.serving.local_backend import LocalBackend

    return LocalBackend(
        settings.model_config,
        models_root=settings.models_root,
        timeout=settings.timeout,
        poll_interval=settings.poll_interval,
        warmup=settings.warmup,
        session_threads=settings.session_threads,
        async_workers=settings.async_workers,
        max_load_retries=settings.max_load_retries,
        load_retry_interval=settings.load_retry_interval,
        allow_labels_for_unavailable=settings.allow_labels_for_unavailable,
    )


class Serving:
    """Owns the pipeline file and one Backend per process.

    The pipeline file is read when the app is made (a bad file stops it there). The backend
    is opened lazily, so a gunicorn worker opens its own after the fork; ``start()`` opens it
    at once and checks the servables against the pipeline file (gunicorn.conf.py calls it
    when a worker boots).
    """

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pipeline_config: PipelineConfig = load_pipeline_config(
            settings.pipeline_path(), required=settings.pipeline_config is not None
        )
        self._backend: Backend | None = None
        self._pid: int | None = None
        self._failure: str | None = None  # why this process's backend did not start
        self._pipeline: Pipeline | None = None
        self._lock = threading.Lock()

    def init_app(self, app: Flask) -> None:
        app.extensions["serving"] = self
        atexit.register(self.close)

    @property
    def backend(self) -> Backend:
        with self._lock:
            if self._failure is not None and self._pid == os.getpid():
                raise ServingUnavailable(self._failure, retry_after=5)
            if self._backend is None or self._pid != os.getpid():
                try:
                    backend = create_backend(self.settings)
                except (GatewayError, ValueError, OSError) as exc:
                    # Remembered, not retried per request: a model config the server refused at start stays
                    # refused (tensorflow_model_server exits), and each try would load every model again.
                    self._failure, self._pid = f"the serving backend did not start: {exc}", os.getpid()
                    raise ServingUnavailable(self._failure, retry_after=5) from exc
                if self.metrics is not None:
                    backend = InstrumentedBackend(backend, self.metrics)
                self._backend = backend
                self._pid = os.getpid()
            return self._backend

    @property
    def pipeline(self) -> Pipeline:
        backend = self.backend
        with self._lock:
            if self._pipeline is None or self._pipeline.backend is not backend:
                self._pipeline = Pipeline(
                    backend,
                    self.pipeline_config,
                    threshold=self.settings.face_threshold,
                    max_pixels=self.settings.max_pixels,
                    timeout=self.settings.timeout,
                )
            return self._pipeline

    def start(self) -> None:
        """Open the backend now and check every stage's servable; a misfit raises PipelineMisfit.

        Servables that cannot be asked yet (TF Serving still starting) are logged and checked
        later, when a request first reaches them.
        """
        reports = check_pipeline(self.backend, self.pipeline_config)
        misfits = misfits_of(reports)
        if misfits:
            raise PipelineMisfit(self.pipeline_config.source, misfits)
        waiting = {name: report.unreachable for name, report in reports.items() if report.unreachable}
        for name, reason in waiting.items():
            log.warning("stage %s not checked yet (its servable cannot be asked: %s)", name, reason)
        settings = self.settings
        where = (
            f"TF Serving at {settings.serving_target}"
            if settings.backend == "grpc"
            else f"the embedded runtime over {settings.model_config}"
        )
        found = ", ".join(
            f"{name}={stage.servable}" + (f" v{report.signature.version}" if report.signature else " (not yet)")
            for (name, stage), report in zip(self.pipeline_config.items(), reports.values(), strict=True)
        )
        log.info("serving from %s; pipeline %s: %s", where, self.pipeline_config.source, found)

    def close(self) -> None:
        with self._lock:
            self._pipeline = None
            backend, self._backend = self._backend, None
            owned = self._pid == os.getpid()
        if backend is not None and owned:
            backend.close()


def serving(app: Flask | None = None) -> Serving:
    return (app or current_app).extensions["serving"]
