"""Long-lived resources wired to the Flask app: the pipeline file, and the serving backend created in each process."""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from flask import Flask, current_app

from app.config import Settings
from app.errors import GatewayError, ServingUnavailable
from app.pipeline import Pipeline
from app.pipeline_check import PipelineMisfit, check_pipeline, misfits_of
from app.pipeline_config import (
    PipelineConfig,
    PipelineConfigError,
    StageConfig,
    load_pipeline_config,
    parse_pipeline_config,
)
from app.serving.base import Backend
from app.serving.model_config import ModelConfigError, load_model_config
from app.web.metrics import GatewayMetrics, InstrumentedBackend

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
            servable_targets=settings.servable_targets,
        )
    if importlib.util.find_spec("tensorflow") is None:
        # The thin gateway (requirements-gateway.txt, the image's default target) has no TensorFlow: say what to
        # set instead of a ModuleNotFoundError in every worker.
        raise ValueError(
            "GATEWAY_BACKEND=local runs the models in this process and needs TensorFlow, which is not installed "
            "here (the thin gateway): set GATEWAY_BACKEND=grpc and GATEWAY_SERVING_TARGET=<TF Serving host>:8500, "
            "or install requirements.txt"
        )
    from app.serving.tensorflow_import import import_tensorflow

    import_tensorflow(settings.log_level.upper())  # before the runtime imports it: its start-up noise filtered
    from app.serving.local_backend import LocalBackend

    return LocalBackend(
        settings.model_config_file,
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


# A file read within this many seconds of its mtime may have changed again within the same mtime tick
# (1 ns on ext4, 2 s on FAT): it is read again (and compared) at the next look, whatever its stamp says.
_RACY_SECONDS = 2.0


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file from the one last read (mtime, size, inode); None where it cannot be read."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_mtime_ns, found.st_size, found.st_ino


class PipelineFile:
    """The pipeline file as last read, looked at again when asked: a newer version of it, if it changed.

    A change is seen by the file's mtime, size and inode; a file read within the same clock
    tick as it was written is read again at the next look, as git does with such entries. A file
    that is now unreadable, invalid or gone is *refused*: the last good one stays in force,
    and ``refused`` says why (logged once per reason).
    """

    def __init__(self, path: Path, *, required: bool) -> None:
        self.path = Path(path)
        self.required = required
        self._stamp = _file_stamp(self.path)
        self._text = self._read()
        self._read_at = time.time()
        # Parsed from the very bytes kept above, so a write between the two can never go unseen.
        if self._text is None:
            self.config: PipelineConfig = load_pipeline_config(self.path, required=required)  # defaults, or refused
        else:
            self.config = parse_pipeline_config(self._text, source=self.path)  # a bad file stops the app
        self.refused: str | None = None

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except OSError:
            return None

    def look(self) -> PipelineConfig | None:
        """The file's new configuration if it changed into a valid one since the last look, else None."""
        stamp = _file_stamp(self.path)
        racy = self._stamp is not None and self._read_at - self._stamp[0] / 1e9 < _RACY_SECONDS
        if stamp == self._stamp and not racy:
            return None
        self._stamp = stamp
        text = self._read()
        self._read_at = time.time()
        if text == self._text and stamp is not None:
            return None
        self._text = text
        if stamp is None and self.config.source.startswith("built-in defaults") and not self.required:
            return None  # still no file: the defaults serve, as at start
        try:
            if text is None:
                raise PipelineConfigError(self.path, "", "is gone or cannot be read")
            config = parse_pipeline_config(text, source=self.path)
        except PipelineConfigError as exc:
            self.refuse(f"{exc}; the pipeline file read before it stays in force")
            return None
        return config

    def accept(self, config: PipelineConfig) -> None:
        self.config, self.refused = config, None

    def refuse(self, reason: str) -> None:
        if reason != self.refused:
            log.error("pipeline file refused: %s", reason)
        self.refused = reason


class ConfiguredLabels:
    """serving_models.config's servables and their version labels, parsed again only when the file changes.

    A change is seen as :class:`PipelineFile` sees one (mtime, size and inode; a file read within
    two seconds of its mtime is read again at the next look). A file that cannot be read or parsed
    gives None, logged once per change.
    """

    def __init__(self, path: Path, models_root: Path | None) -> None:
        self.path = Path(path)
        self.models_root = models_root
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._read_at: float | None = None  # None: never read
        self._labels: Mapping[str, Mapping[str, int]] | None = None

    def labels(self) -> Mapping[str, Mapping[str, int]] | None:
        stamp = _file_stamp(self.path)
        with self._lock:
            if self._read_at is not None and stamp == self._stamp:
                racy = stamp is not None and self._read_at - stamp[0] / 1e9 < _RACY_SECONDS
                if not racy:
                    return self._labels
            changed = self._read_at is None or stamp != self._stamp
            self._stamp, self._read_at = stamp, time.time()
            try:
                config = load_model_config(self.path, models_root=self.models_root, check_paths=False)
            except (ModelConfigError, OSError) as exc:
                if changed:
                    log.warning(
                        "the model server's config cannot be read here (%s): its version labels are unknown", exc
                    )
                self._labels = None
            else:
                self._labels = {servable.name: dict(servable.labels) for servable in config.servables}
            return self._labels


class Serving:
    """Owns the pipeline file and one Backend per process.

    The pipeline file is read when the app is made (a bad file stops it there), and looked
    at again every ``GATEWAY_POLL_INTERVAL`` seconds, when a request comes (0: never): a
    changed file that is valid, and whose rewired stages fit their servables, replaces it for
    the requests that come next (traffic weights change without a restart); one that does
    not is refused, logged, and shown in /api/v1/models, and the last good one serves on.
    The backend is opened lazily, so a gunicorn worker opens its own after the fork;
    ``start()`` opens it at once and checks the servables against the pipeline file
    (gunicorn.conf.py calls it when a worker boots).
    """

    def __init__(self, settings: Settings, metrics: GatewayMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pipeline_file = PipelineFile(settings.pipeline_path(), required=settings.pipeline_config is not None)
        self._looked_at = time.monotonic()
        self._reload_lock = threading.Lock()
        self.configured_labels = ConfiguredLabels(settings.model_config_file, settings.models_root)
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
    def pipeline_config(self) -> PipelineConfig:
        """The pipeline file in force (the last good one read)."""
        return self.pipeline_file.config

    @property
    def pipeline(self) -> Pipeline:
        backend = self.backend
        self._look_at_pipeline_file(backend)
        with self._lock:
            config = self.pipeline_file.config
            if self._pipeline is None or self._pipeline.backend is not backend or self._pipeline.config is not config:
                self._pipeline = Pipeline(
                    backend,
                    config,
                    threshold=self.settings.face_threshold,
                    max_pixels=self.settings.max_pixels,
                    max_faces=self.settings.max_faces,
                    timeout=self.settings.timeout,
                    observer=None if self.metrics is None else self.metrics.rollouts,
                    labels=self.version_labels,
                    arm_check_interval=self.settings.poll_interval or 2.0,
                    shadows_in_flight=max(1, self.settings.async_workers // 2),
                )
            return self._pipeline

    def _look_at_pipeline_file(self, backend: Backend) -> None:
        """Every poll interval, one request looks at the pipeline file; a changed one must fit the servables."""
        interval = self.settings.poll_interval
        if not interval or time.monotonic() - self._looked_at < interval:
            return
        if not self._reload_lock.acquire(blocking=False):
            return  # another request is looking
        try:
            self._looked_at = time.monotonic()
            config = self.pipeline_file.look()
            if config is None:
                return
            # Only the stages the edit rewires are held to their servables: a change of weights or shadow alone is
            # never refused (a rollback must go through even while a canary misfits).
            before = self.pipeline_file.config
            rewired = {name for name in config if _wiring(config[name]) != _wiring(before[name])}
            misfits = [
                (name, misfit) for name, misfit in misfits_of(check_pipeline(backend, config)) if name in rewired
            ]
            if misfits:
                self.pipeline_file.refuse(
                    f"{PipelineMisfit(config.source, misfits).message}; the pipeline file read before it stays in force"
                )
                return
            self.pipeline_file.accept(config)
            log.info(
                "pipeline file %s read again: %s", config.source,
                ", ".join(f"{name}={stage.servable}" + _rollout_text(stage.traffic, stage.shadow)
                          for name, stage in config.items()),
            )  # fmt: skip
        finally:
            self._reload_lock.release()

    def version_labels(self) -> Mapping[str, Mapping[str, int]] | None:
        """The version labels of every servable the model server is configured with (labelled or not): those in
        force when the server can tell (the embedded one can), else serving_models.config's, parsed again only when
        the file changes (TF Serving's API lists neither); None when neither can be read."""
        backend = self._backend
        state = backend.config_state() if backend is not None else None
        if state is not None:
            return state.labels
        return self.configured_labels.labels()

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
            else f"the embedded runtime over {settings.model_config_file}"
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


def _wiring(stage: StageConfig) -> dict:
    """What a stage's table says about the servable's tensors and feeding, without its rollout."""
    return stage.model_dump(exclude={"traffic", "shadow"})


def _rollout_text(traffic: Mapping[str, int] | None, shadow: str | None) -> str:
    parts = [f"{arm} {weight}%" for arm, weight in (traffic or {}).items()]
    if shadow is not None:
        parts.append(f"shadow {shadow}")
    return f" ({', '.join(parts)})" if parts else ""
