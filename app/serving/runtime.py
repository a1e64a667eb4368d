"""In-process model server: serves the SavedModels of a serving_models.config the way TF Serving does.

It loads each version as TF Serving's ``SavedModelBundle`` does (a TF1 Session,
``loader.load`` with the "serve" tag, runs by SignatureDef tensor names), runs
its warmup records, applies the version policy and the version labels, and
polls the base paths and the config file for changes. A new version is loaded
before the one it replaces is unloaded, and the swap is a single reference
assignment under a lock, so a request in flight finishes on the version it
started on and none fails. Failures are raised as ``ServingStatus`` with TF
Serving's codes and messages, so the caller translates them with the same
table it uses for the wire.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import prediction_log_pb2

from app.errors import ServingStatus
from app.serving import tensors
from app.serving.base import ModelMetadata, VersionStatus, metadata_from_signature_defs
from app.serving.layout import list_versions
from app.serving.model_config import ServableConfig, ServingConfig, load_model_config

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's own cap
_TF_CODE_TO_GRPC = {code.value[0]: code for code in grpc.StatusCode}


def _headline(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong, as TF Serving would report it.

    The Python session prefixes "Graph execution error:" and appends where the op was
    created; TF Serving's C++ session reports neither.
    """
    lines = [line.strip() for line in message.splitlines()]
    meaningful = [line for line in lines if line and line != "Graph execution error:"]
    return meaningful[0] if meaningful else message


class LoadedVersion:
    """One version of one model, loaded in its own graph and session, reference-counted for safe unloading."""

    def __init__(self, name: str, version: int, path: Path, session_config: tf.compat.v1.ConfigProto) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(path))
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self.metadata: ModelMetadata = metadata_from_signature_defs(name, version, self.signature_defs)
        self._refs = 0
        self._retired = False
        self._ref_lock = threading.Lock()

    def acquire(self) -> None:
        with self._ref_lock:
            self._refs += 1

    def release(self) -> None:
        with self._ref_lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self._session.close()

    def retire(self) -> None:
        """Close the session once the last request using this version has finished."""
        with self._ref_lock:
            self._retired = True
            close = self._refs == 0
        if close:
            self._session.close()

    def run(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Iterable[str] = (),
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        sig = self.signature_defs.get(signature)
        if sig is None or signature.startswith("__"):
            raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{signature}" not found.')
        feed = self._feed(sig, inputs)
        wanted = list(output_filter) or list(sig.outputs)
        for alias in wanted:
            if alias not in sig.outputs:
                raise ServingStatus(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias}. Outputs expected to be in the "
                    f"set {{{','.join(sorted(sig.outputs))}}}.",
                )
        fetches = {alias: sig.outputs[alias].name for alias in wanted}
        options = None
        if timeout is not None:
            options = tf.compat.v1.RunOptions(timeout_in_ms=max(1, int(timeout * 1000)))
        try:
            return self._session.run(fetches, feed_dict=feed, options=options)
        except tf.errors.OpError as exc:
            code = _TF_CODE_TO_GRPC.get(exc.error_code, grpc.StatusCode.INTERNAL)
            raise ServingStatus(code, _headline(exc.message)) from exc
        except (TypeError, ValueError) as exc:  # the session refused the feed itself (shape, value)
            raise ServingStatus(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc

    @staticmethod
    def _feed(sig: meta_graph_pb2.SignatureDef, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sent, expected = set(inputs), set(sig.inputs)
        if sent != expected:
            missing, extra = sorted(expected - sent), sorted(sent - expected)
            if extra and not missing:
                raise ServingStatus(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor alias not found in signature: {', '.join(extra)}. Inputs expected to be "
                    f"in the set {{{','.join(sorted(expected))}}}.",
                )
            raise ServingStatus(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(expected))}}}). Sent extra: {{{','.join(extra)}}}. "
                f"Missing but required: {{{','.join(missing)}}}.",
            )
        feed = {}
        for alias, value in inputs.items():
            info = sig.inputs[alias]
            array = np.asarray(value)
            sent_type = tensors.datatype_of(array.dtype)
            if sent_type != info.dtype:
                raise ServingStatus(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg {alias} to be {tf.dtypes.as_dtype(info.dtype).name} but "
                    f"{tf.dtypes.as_dtype(sent_type).name} is provided",
                )
            feed[info.name] = array
        return feed


@dataclass
class _Model:
    """The serving state of one model: an immutable snapshot of versions and labels, replaced whole."""

    config: ServableConfig
    versions: Mapping[int, LoadedVersion] = field(default_factory=dict)
    labels: Mapping[str, int] = field(default_factory=dict)
    states: dict[int, VersionStatus] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)


class ModelRuntime:
    """Loads, serves, polls and unloads the servables of one serving_models.config. Thread-safe."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        models_root: Path | None = None,
        poll_interval: float = 1.0,
        warmup: bool = True,
        session_threads: int = 0,
        poll: bool = True,
    ) -> None:
        self.config_path = Path(config_path)
        self.models_root = models_root
        self.poll_interval = poll_interval
        self.warmup = warmup
        self._session_config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=session_threads,
            inter_op_parallelism_threads=session_threads,
            allow_soft_placement=True,
        )
        self._lock = threading.Lock()  # guards self._models snapshots
        self._sync_lock = threading.Lock()  # one load/unload pass at a time
        self._models: dict[str, _Model] = {}
        self._config_text: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        try:
            self.apply_config(self._read_config(), strict=True)
        except BaseException:
            self.close()
            raise
        if poll and poll_interval > 0:
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._poller.start()

    # -- configuration and polling ---------------------------------------------------------------

    def _read_config(self) -> ServingConfig:
        config = load_model_config(self.config_path, models_root=self.models_root)
        self._config_text = self.config_path.read_text(encoding="utf-8")
        return config

    def apply_config(self, config: ServingConfig, *, strict: bool = False) -> None:
        """Serve exactly the models of ``config``: load, unload and relabel.

        A label that names a version that is not available is refused, as TF Serving does:
        with ``strict`` the whole call fails (start-up, an explicit reload); otherwise the
        model keeps its previous labels and the problem is logged.
        """
        with self._sync_lock:
            with self._lock:
                current = dict(self._models)
            models = {}
            for servable in config.servables:
                model = current.get(servable.name) or _Model(config=servable)
                if model.config != servable:
                    model = replace(model, config=servable, states=dict(model.states))
                    model.failed.clear()
                models[servable.name] = model
            # Load first, swap, then unload: availability is preserved across the change.
            label_errors = []
            for model in models.values():
                self._sync_versions(model)
                try:
                    self._apply_labels(model, model.config.labels)
                except ServingStatus as exc:
                    label_errors.append(exc)
            removed = [m for name, m in current.items() if name not in models]
            with self._lock:
                self._models = models
            for model in removed:
                self._unload(model, list(model.versions.values()))
        if strict and label_errors:
            raise label_errors[0]
        for exc in label_errors:
            log.error("version labels not changed: %s", exc.message)

    def poll_once(self) -> None:
        """One polling pass: re-read the config file if it changed, then look for new versions."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except OSError as exc:
            log.error("cannot read %s, keeping the current models: %s", self.config_path, exc)
            text = self._config_text
        if text != self._config_text:
            try:
                config = self._read_config()
            except ValueError as exc:
                log.error("config %s not applied: %s", self.config_path, exc)
                self._config_text = text  # do not log the same broken file every poll
            else:
                log.info("config %s changed, applying it", self.config_path)
                self.apply_config(config)
                return
        with self._sync_lock:
            with self._lock:
                models = list(self._models.values())
            for model in models:
                self._sync_versions(model)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:  # the poller must outlive any one bad pass
                log.exception("model polling pass failed")

    def _sync_versions(self, model: _Model) -> None:
        """Bring the loaded versions of one model to what its policy asks of the disk."""
        on_disk = list_versions(model.config.base_path)
        aspired = set(model.config.policy.select(on_disk)) - model.failed
        loaded = dict(model.versions)
        for version in sorted(aspired - set(loaded)):
            servable = self._load(model, version)
            if servable is not None:
                loaded[version] = servable
        dropped = [loaded.pop(v) for v in sorted(set(loaded) - aspired)]
        if dropped or set(loaded) != set(model.versions):
            with self._lock:
                model.versions = loaded
        self._unload(model, dropped)

    def _load(self, model: _Model, version: int) -> LoadedVersion | None:
        name, path = model.config.name, model.config.base_path / str(version)
        self._set_state(model, VersionStatus(version, "LOADING"))
        started = time.monotonic()
        try:
            servable = LoadedVersion(name, version, path, self._session_config)
            if self.warmup:
                self._run_warmup(servable)
        except Exception as exc:  # any failure to load marks the version END with the error, like TF Serving
            model.failed.add(version)
            self._set_state(model, VersionStatus(version, "END", "UNKNOWN", f"Loading {path} failed: {exc}"))
            log.error("servable %s version %d failed to load: %s", name, version, exc)
            return None
        self._set_state(model, VersionStatus(version, "AVAILABLE"))
        log.info("servable %s version %d loaded in %.2fs", name, version, time.monotonic() - started)
        return servable

    def _run_warmup(self, servable: LoadedVersion) -> None:
        warmup_path = servable.path / WARMUP_FILE
        if not warmup_path.is_file():
            return
        for record in tf.data.TFRecordDataset(str(warmup_path)).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") != "predict_log":
                continue  # this runtime serves Predict only; other kinds of warmup are skipped
            request = entry.predict_log.request
            inputs = {alias: tensors.from_tensor_proto(proto) for alias, proto in request.inputs.items()}
            servable.run(request.model_spec.signature_name or "serving_default", inputs)

    def _apply_labels(self, model: _Model, labels: Mapping[str, int]) -> None:
        for label, version in labels.items():
            if version not in model.versions:
                raise ServingStatus(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Request to assign label {label} to version {version} of model {model.config.name}, "
                    "which is not currently available for inference",
                )
        with self._lock:
            model.labels = dict(labels)

    def _set_state(self, model: _Model, status: VersionStatus) -> None:
        with self._lock:
            model.states[status.version] = status

    def _unload(self, model: _Model, servables: list[LoadedVersion]) -> None:
        for servable in servables:
            self._set_state(model, VersionStatus(servable.version, "UNLOADING"))
            servable.retire()
            self._set_state(model, VersionStatus(servable.version, "END"))
            log.info("servable %s version %d unloaded", model.config.name, servable.version)

    # -- requests ------------------------------------------------------------------------------------

    def _resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        with self._lock:
            model = self._models.get(name)
            if version is None and label is not None:
                if model is None or label not in model.labels:
                    raise ServingStatus(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
                    )
                version = model.labels[label]
            if version is not None:
                servable = model.versions.get(version) if model else None
                request = f"Specific({name}, {version})"
            else:
                servable = model.versions[max(model.versions)] if model and model.versions else None
                request = f"Latest({name})"
            if servable is None:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
            servable.acquire()
            return servable

    def predict(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = "serving_default",
        output_filter: Iterable[str] = (),
        timeout: float | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Run a signature; returns the version that answered and the outputs by alias."""
        servable = self._resolve(name, version, label)
        try:
            return servable.version, servable.run(signature or "serving_default", inputs, output_filter, timeout)
        finally:
            servable.release()

    def signature_defs(
        self, name: str, *, version: int | None = None, label: str | None = None
    ) -> tuple[int, dict[str, meta_graph_pb2.SignatureDef]]:
        servable = self._resolve(name, version, label)
        try:
            return servable.version, servable.signature_defs
        finally:
            servable.release()

    def metadata(self, name: str, *, version: int | None = None, label: str | None = None) -> ModelMetadata:
        servable = self._resolve(name, version, label)
        try:
            return servable.metadata
        finally:
            servable.release()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        with self._lock:
            model = self._models.get(name)
            states = dict(model.states) if model else {}
        if not states:
            raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        if version is not None:
            if version not in states:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [states[version]]
        return [states[v] for v in sorted(states)]

    def labels(self, name: str) -> dict[str, int]:
        with self._lock:
            model = self._models.get(name)
            return dict(model.labels) if model else {}

    @property
    def model_names(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(self._models)

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=30)
        with self._sync_lock, self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            self._unload(model, list(model.versions.values()))
