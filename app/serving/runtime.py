"""In-process model server: serves the SavedModels of a serving_models.config the way TF Serving 2.20 does.

What it mirrors, and where in tensorflow/serving each rule comes from:

- Loading (saved_model_bundle_factory.cc, session_bundle_util.cc): each version in its own TF1
  Session with the "serve" tag, runs by SignatureDef tensor names, its warmup records replayed
  before it serves (``app.serving.warmup``). A failed load is retried ``max_num_load_retries``
  times, ``load_retry_interval`` apart (loader_harness.cc, util/retrier.cc), then the version is
  END with the loader's own status code and message.
- Availability (availability_preserving_policy.cc): a serving version is unloaded only once an
  aspired version is ready, so a broken new version leaves the old one serving. Loads and
  unloads happen one at a time, highest new version first (the manager's loop with its default
  ``--num_load_threads=0``).
- Polling (file_system_storage_path_source.cc): every child of a base path whose name parses as
  an integer is a version (no look inside); a base path that cannot be listed fails that whole
  poll, which is logged, and everything keeps serving.
- Configuration (server_core.cc ``ReloadConfig``): the config file is re-read and re-applied on
  every poll; base paths must be absolute; every ``version_labels`` entry is checked against the
  versions already AVAILABLE before anything of the new config applies, and one refused label
  refuses the whole config (at start the server does not start). ``allow_labels_for_unavailable``
  is ``--allow_version_labels_for_unavailable_models``: a *new* label may then name a version
  not loaded yet, but an existing label is still not moved onto one.
- Status (servable_state_monitor.h, get_model_status_impl.cc): newest version first; states are
  kept after a version or a whole model goes, so END (with the load error, if any) stays visible.
- Predict (predict_util.cc, saved_model/util.cc): the servable is resolved before the tensors are
  parsed, TF Serving's checks and messages, and the arrays go to the session through TensorFlow's
  C API as they are, so dtype and shape are judged by the session itself, not by Python.

Failures are raised as ``ServingStatus`` with TF Serving's codes and messages, so the caller
translates them with the same table it uses for the wire. A request in flight finishes on the
version it started on: versions are reference-counted and closed after their last request.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf

from app.errors import ServingStatus
from app.serving import examples as example_runs
from app.serving import warmup as warmups
from app.serving.base import DEFAULT_SIGNATURE, ModelMetadata, VersionStatus
from app.serving.batching import Batching
from app.serving.layout import version_folders
from app.serving.loaded_version import LoadedVersion
from app.serving.model_config import (
    DEFAULT_CONTAINER_PREFIX,
    ServableConfig,
    ServingConfig,
    load_model_config,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_LOAD_RETRIES = 5  # --max_num_load_retries
DEFAULT_LOAD_RETRY_INTERVAL = 60.0  # --load_retry_interval_micros, in seconds
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ConfigRefused(ServingStatus):
    """A model config the server would not apply; the one it had stays in force."""


def _warn_duplicate(version: int, kept: str, ignored: str) -> None:
    log.warning(
        "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
        version, kept, ignored,
    )  # fmt: skip


def _is_absolute(base_path: str) -> bool:
    """TF Serving's UriIsRelativePath, negated: a URI with a scheme, or a path from the root."""
    return bool(_URI_SCHEME.match(base_path)) or base_path.startswith("/")


@dataclass
class _Harness:
    """One version as TF Serving's manager holds it: where it is, whether the source aspires to it, its state.

    ``state`` follows LoaderHarness::State, simplified: new, loading, ready, error, unloading.
    """

    version: int
    path: Path
    aspired: bool = True
    state: str = "new"
    servable: LoadedVersion | None = None


@dataclass
class _Model:
    config: ServableConfig
    harnesses: dict[int, _Harness] = field(default_factory=dict)

    def ready(self) -> dict[int, LoadedVersion]:
        return {v: h.servable for v, h in self.harnesses.items() if h.state == "ready" and h.servable is not None}


class _PollFailed(Exception):
    """A base path could not be listed: TF Serving's source fails that whole poll."""


class ModelRuntime:
    """Loads, serves, polls and unloads the servables of one serving_models.config. Thread-safe.

    The config is read from ``config_path``, or given as ``config`` (``tensorflow_model_server
    --model_name --model_base_path``: one model, no file). Base paths under ``container_prefix``
    map onto ``models_root`` (the gateway's embedded backend); ``container_prefix=""`` takes every
    path as written, as the model server does. The base paths are polled every ``poll_interval``
    seconds (``--file_system_poll_wait_seconds``; 0: once, at start), the config file every
    ``config_poll_interval`` seconds (``--model_config_file_poll_wait_seconds``; 0: never again;
    None: with every poll of the base paths). ``batching`` batches the runs of the versions it
    chooses (``--enable_batching``); the runtime closes it with itself.
    """

    def __init__(
        self,
        config_path: str | Path | None,
        *,
        config: ServingConfig | None = None,
        models_root: Path | None = None,
        container_prefix: str = DEFAULT_CONTAINER_PREFIX,
        poll_interval: float = 1.0,
        config_poll_interval: float | None = None,
        warmup: bool = True,
        session_threads: int = 0,
        session_config: tf.compat.v1.ConfigProto | None = None,
        poll: bool = True,
        max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
        load_retry_interval: float = DEFAULT_LOAD_RETRY_INTERVAL,
        allow_labels_for_unavailable: bool = False,
        force_allow_labels_for_unavailable: bool = False,
        batching: Batching | None = None,
    ) -> None:
        if max_load_retries < 0:
            raise ValueError(f"max_load_retries must be 0 or more, got {max_load_retries}")
        if config_path is None and config is None:
            raise ValueError("give a config file or a config")
        self.config_path = Path(config_path) if config_path is not None else None
        self.models_root = models_root
        self.container_prefix = container_prefix
        self.poll_interval = poll_interval
        self.config_poll_interval = config_poll_interval
        self.warmup = warmup
        self.max_load_retries = max_load_retries
        self.load_retry_interval = load_retry_interval
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.force_allow_labels_for_unavailable = force_allow_labels_for_unavailable
        self.batching = batching
        if session_config is None:
            session_config = tf.compat.v1.ConfigProto(
                intra_op_parallelism_threads=session_threads,
                inter_op_parallelism_threads=session_threads,
            )
        self._session_config = tf.compat.v1.ConfigProto()
        self._session_config.CopyFrom(session_config)
        self._session_config.allow_soft_placement = True
        self._lock = threading.Lock()  # guards what requests read: models, harness states, labels, states
        self._manager = threading.RLock()  # one config change, load or unload at a time, as TF Serving's manager
        self._models: dict[str, _Model] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._config: ServingConfig | None = None
        self._said: dict[str, str] = {}
        #: Why the newest config file is not in force (None: it is); the previous config keeps serving.
        self.config_refusal: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        try:
            if config is None:
                assert self.config_path is not None
                config = load_model_config(self.config_path, models_root=models_root, container_prefix=container_prefix)
            self._start(config)
        except BaseException:
            self.close()
            raise
        if poll and (self._paths_every() or self._config_every()):
            self._poller = threading.Thread(target=self._poll_loop, name="model-poller", daemon=True)
            self._poller.start()

    # -- configuration (ServerCore::ReloadConfig) --------------------------------------------------

    @property
    def config(self) -> ServingConfig | None:
        """The config in force."""
        return self._config

    def _start(self, config: ServingConfig) -> None:
        new = self._apply(config)
        unavailable = self._unavailable(new)
        if unavailable:  # load_servables_fast.cc: the server does not start
            raise ServingStatus(grpc.StatusCode.UNKNOWN, _not_available("servable(s)", unavailable))

    def apply_config(self, config: ServingConfig) -> None:
        """Serve ``config`` as TF Serving's ReloadConfig does.

        Raises ConfigRefused when it is refused (relative base path, a label on a version that is not
        available, a new model whose base path does not exist): nothing of it applies. Raises
        ServingStatus (UNKNOWN) when it applied but a model it adds did not become available.
        """
        new = self._apply(config)
        unavailable = self._unavailable(new)
        if unavailable:  # server_core.cc WaitUntilModelsAvailable
            raise ServingStatus(grpc.StatusCode.UNKNOWN, _not_available("model(s)", unavailable))

    def reload_config(self) -> None:
        """Read the config file again and apply it; raises as ``apply_config`` or ModelConfigError (unreadable).
        Without a config file (one model given as ``config``) there is nothing to read: it polls the base paths."""
        if self.config_path is None:
            with self._manager:
                self._sync()
            return
        try:
            config = load_model_config(
                self.config_path,
                models_root=self.models_root,
                container_prefix=self.container_prefix,
                check_paths=False,
            )
            self.apply_config(config)
        except ConfigRefused as exc:
            self.config_refusal = f"{self.config_path}: {exc.status.name}: {exc.message}"
            raise
        except ValueError as exc:  # ModelConfigError: TF Serving logs "Failed to read ModelServerConfig file"
            self.config_refusal = str(exc)
            raise
        self.config_refusal = None

    def _apply(self, config: ServingConfig) -> list[str]:
        with self._manager:
            self._validate(config)
            labels = self._label_map(config)
            with self._lock:
                self._labels = labels  # before any model changes, as UpdateModelVersionLabelMap runs first
                self._config = config
            added = self._reconfigure(config)
            self._sync()
            return added

    def _validate(self, config: ServingConfig) -> None:
        for servable in config.servables:
            if not _is_absolute(servable.configured_base_path):
                raise ConfigRefused(
                    _INVALID,
                    f"Expected model {servable.name} to have an absolute path or URI; "
                    f"got base_path()={servable.configured_base_path}",
                )
        for servable in config.servables:
            # TF Serving would wait for such a model for ever, the config thread blocked; refusing says why.
            if servable.name not in self._models and not servable.base_path.exists():
                raise ConfigRefused(
                    _INVALID,
                    f"Could not find base path {servable.base_path} for servable {servable.name}",
                )

    def _label_map(self, config: ServingConfig) -> dict[str, dict[str, int]]:
        """ServerCore::UpdateModelVersionLabelMap: the new labels, each checked against the versions AVAILABLE now."""
        labels: dict[str, dict[str, int]] = {}
        with self._lock:
            states = {name: dict(versions) for name, versions in self._states.items()}
            current = {name: dict(found) for name, found in self._labels.items()}
        for servable in config.servables:
            for label in sorted(servable.labels):
                version = servable.labels[label]
                allowed = self.force_allow_labels_for_unavailable
                if not allowed and self.allow_labels_for_unavailable:
                    existing = current.get(servable.name, {}).get(label)
                    allowed = existing is None or existing == version  # a new label, or one that does not move
                state = states.get(servable.name, {}).get(version)
                if not allowed and (state is None or state.state != "AVAILABLE"):
                    raise ConfigRefused(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"Request to assign label to version {version} of model {servable.name}, "
                        "which is not currently available for inference",
                    )
                labels.setdefault(servable.name, {})[label] = version
        return labels

    def _reconfigure(self, config: ServingConfig) -> list[str]:
        """Models added, changed and removed; a removed model's versions are unloaded. Returns the added names."""
        current = dict(self._models)
        models: dict[str, _Model] = {}
        added = []
        for servable in config.servables:
            model = current.get(servable.name)
            if model is None:
                model = _Model(servable)
                added.append(servable.name)
            else:
                with self._lock:
                    model.config = servable
            models[servable.name] = model
        removed = [model for name, model in current.items() if name not in models]
        with self._lock:
            self._models = models | {model.config.name: model for model in removed}  # serving until unloaded
        for model in removed:
            self._set_aspired(model, {})
            self._manage(model)
        with self._lock:
            self._models = models
        return added

    def _unavailable(self, names: list[str]) -> list[tuple[str, VersionStatus]]:
        """The models among ``names`` with no version AVAILABLE and one that ended in an error."""
        failed = []
        with self._lock:
            for name in names:
                states = self._states.get(name, {})
                if any(state.state == "AVAILABLE" for state in states.values()):
                    continue
                ended = [states[v] for v in sorted(states, reverse=True) if states[v].error_code != "OK"]
                if ended:
                    failed.append((name, ended[0]))
                else:  # TF Serving would wait for a first version; this runtime serves on and reports NOT_FOUND
                    log.warning("no version of servable %s is available yet", name)
        return sorted(failed, key=lambda item: (item[0], item[1].version))  # std::map<ServableId> order

    # -- polling (FileSystemStoragePathSource) and the manager (AspiredVersionsManager) --------------

    def poll_once(self, *, config: bool = True) -> None:
        """One polling pass: re-apply the config file (unless ``config`` is False), then look for new and removed
        versions."""
        if not config or self.config_path is None:
            with self._manager:
                self._sync()
            return
        try:
            self.reload_config()
            return  # applying it polled the base paths too
        except ConfigRefused as exc:
            self._say(
                "config", logging.ERROR, "config %s not applied, the previous one stays: %s", self.config_path, exc
            )
        except ValueError as exc:
            self._say("config", logging.ERROR, "Failed to read ModelServerConfig file: %s", exc)
        except ServingStatus as exc:
            self._say("config", logging.ERROR, "config %s applied, but: %s", self.config_path, exc.message)
            return
        with self._manager:
            self._sync()

    def _paths_every(self) -> float | None:
        return self.poll_interval if self.poll_interval > 0 else None

    def _config_every(self) -> float | None:
        if self.config_path is None:
            return None
        every = self.poll_interval if self.config_poll_interval is None else self.config_poll_interval
        return every if every > 0 else None

    def _poll_loop(self) -> None:
        """Poll the base paths and the config file, each on its own clock (a config pass polls the paths too); a
        clock restarts when its pass has ended, so a slow pass (a version loading) is not followed by another at
        once."""
        paths_every, config_every = self._paths_every(), self._config_every()
        started = time.monotonic()
        next_paths = started + paths_every if paths_every else math.inf
        next_config = started + config_every if config_every else math.inf
        while not self._stop.wait(max(0.0, min(next_paths, next_config) - time.monotonic())):
            with_config = time.monotonic() >= next_config
            try:
                self.poll_once(config=with_config)
            except Exception:  # the poller must outlive any one bad pass
                log.exception("model polling pass failed")
            ended = time.monotonic()
            next_paths = ended + paths_every if paths_every else math.inf
            if with_config:
                next_config = ended + config_every  # type: ignore[operator]

    def _sync(self) -> None:
        """Poll every base path, then bring each model's versions to what its policy aspires to."""
        with self._manager:
            models = list(self._models.values())
            try:
                aspired = {model.config.name: self._aspired(model.config) for model in models}
            except _PollFailed as exc:
                self._say(
                    "poll", logging.ERROR, "FileSystemStoragePathSource encountered a filesystem access error: %s", exc
                )
                return
            self._said.pop("poll", None)
            for model in models:
                self._set_aspired(model, aspired[model.config.name])
                self._manage(model)

    def _aspired(self, servable: ServableConfig) -> dict[int, Path]:
        """The versions the source aspires to: numeric children of the base path, picked by the policy."""
        base = servable.base_path
        if not base.exists():
            raise _PollFailed(f"Could not find base path {base} for servable {servable.name}")
        try:
            by_version = version_folders(base, on_duplicate=_warn_duplicate)
        except OSError as exc:
            raise _PollFailed(f"{base}: {exc.strerror or exc}") from exc
        chosen = servable.policy.select(by_version)
        if not by_version:
            self._say(
                f"empty:{servable.name}",
                logging.WARNING,
                "No versions of servable %s found under base path %s. Did you forget to name your leaf directory "
                "as a number (eg. '/1/')?",
                servable.name, base,
            )  # fmt: skip
        else:
            self._said.pop(f"empty:{servable.name}", None)
        return {version: by_version[version] for version in chosen}

    def _set_aspired(self, model: _Model, aspired: Mapping[int, Path]) -> None:
        """AspiredVersionsManager::ProcessAspiredVersionsRequest for one model."""
        name = model.config.name
        with self._lock:
            if any(v in aspired and not h.aspired for v, h in model.harnesses.items()):
                # ContainsAnyReaspiredVersions: a version kept serving though no longer aspired (availability
                # preserved through a failed load) is asked for again. TF Serving holds the whole request back
                # until that version is gone, which it never is while the failed one stays aspired: the failed
                # version is not tried again under its number until a newer version comes.
                return
            for version, harness in list(model.harnesses.items()):
                if version in aspired:
                    continue
                harness.aspired = False
                if harness.state in ("new", "error"):
                    del model.harnesses[version]  # FlushServables: forgotten, so aspiring it again retries it
            for version, path in aspired.items():
                if version not in model.harnesses:
                    model.harnesses[version] = _Harness(version, path)
                    self._states.setdefault(name, {})[version] = VersionStatus(version, "START")

    def _manage(self, model: _Model) -> None:
        """Take the policy's actions, one at a time, until it has none."""
        while not self._stop.is_set():
            action = self._next_action(model)
            if action is None:
                return
            kind, harness = action
            if kind == "unload":
                self._unload(model, harness)
            else:
                self._load(model, harness)

    @staticmethod
    def _next_action(model: _Model) -> tuple[str, _Harness] | None:
        """AvailabilityPreservingPolicy::GetNextAction."""
        harnesses = list(model.harnesses.values())
        has_aspired = any(h.aspired for h in harnesses)
        aspired_serving = any(h.aspired and h.state == "ready" for h in harnesses)
        unaspired_serving = [h for h in harnesses if not h.aspired and h.state == "ready"]
        if unaspired_serving and (not has_aspired or aspired_serving or len(unaspired_serving) > 1):
            return "unload", min(unaspired_serving, key=lambda h: h.version)
        new = [h for h in harnesses if h.aspired and h.state == "new"]
        if new:
            return "load", max(new, key=lambda h: h.version)
        return None

    def _load(self, model: _Model, harness: _Harness) -> None:
        name, version, path = model.config.name, harness.version, harness.path
        servable_id = f"{{name: {name} version: {version}}}"
        with self._lock:
            harness.state = "loading"
            self._states.setdefault(name, {})[version] = VersionStatus(version, "LOADING")
        started = time.monotonic()
        loaded, failure = None, None
        if not path.is_dir():
            # The resource estimate lists the folder first; for a file that fails, and is not retried.
            failure = ServingStatus(grpc.StatusCode.FAILED_PRECONDITION, f"{path}; Not a directory")
        else:
            for attempt in range(self.max_load_retries + 1):
                if attempt:
                    if self._stop.wait(max(0.0, self.load_retry_interval)):
                        failure = ServingStatus(grpc.StatusCode.CANCELLED, "Loading of servable cancelled")
                        break
                    log.info("Retrying of Loading servable: %s retry: %d", servable_id, attempt)
                try:
                    loaded = self._load_once(name, version, path)
                    break
                except ServingStatus as exc:
                    failure = exc
                    log.error("Loading servable: %s failed: %s: %s", servable_id, exc.status.name, exc.message)
        with self._lock:
            if loaded is not None:
                harness.state, harness.servable = "ready", loaded
                self._states[name][version] = VersionStatus(version, "AVAILABLE")
            else:
                assert failure is not None
                harness.state = "error"
                self._states[name][version] = VersionStatus(version, "END", failure.status.name, failure.message)
        if loaded is not None:
            log.info("Successfully loaded servable version %s in %.2fs", servable_id, time.monotonic() - started)

    def _load_once(self, name: str, version: int, path: Path) -> LoadedVersion:
        servable = LoadedVersion(name, version, path, self._session_config)
        try:
            if self.batching is not None:  # before warmup: TF Serving warms the batching session up
                servable.batching = self.batching.session_for(path, servable.run_alone)
            if self.warmup:
                warmups.run_warmup(servable)
        except ServingStatus:
            servable.retire()
            raise
        except Exception as exc:  # a warmup record the runners choke on is still a failed load
            servable.retire()
            raise ServingStatus(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}") from exc
        return servable

    def _unload(self, model: _Model, harness: _Harness) -> None:
        name, version = model.config.name, harness.version
        with self._lock:
            harness.state = "unloading"  # out of the serving map: new requests no longer find it
            self._states.setdefault(name, {})[version] = VersionStatus(version, "UNLOADING")
            servable, harness.servable = harness.servable, None
        if servable is not None:
            servable.retire()
        with self._lock:
            model.harnesses.pop(version, None)
            self._states[name][version] = VersionStatus(version, "END")
        log.info("Done unloading servable version {name: %s version: %d}", name, version)

    def _say(self, key: str, level: int, message: str, *args: object) -> None:
        """Log a repeated condition once at ``level`` (and at DEBUG while it lasts), not at every poll."""
        text = message % args
        if self._said.get(key) != text:
            self._said[key] = text
            log.log(level, text)
        else:
            log.debug(text)

    # -- requests ------------------------------------------------------------------------------------

    def _resolve(self, name: str, version: int | None, label: str | None) -> LoadedVersion:
        """ServerCore::ServableRequestFromModelSpec and the serving map's lookup."""
        if not name:
            raise ServingStatus(_INVALID, "ModelSpec has no name specified.")
        with self._lock:
            if label is not None:
                labelled = self._labels.get(name, {}).get(label)
                if labelled is None:
                    raise ServingStatus(_INVALID, f"Unrecognized servable version label: {label}")
                version = labelled
            model = self._models.get(name)
            ready = model.ready() if model is not None else {}
            if version is not None:
                servable = ready.get(version)
                request = f"Specific({name}, {version})"
            else:
                servable = ready[max(ready)] if ready else None
                request = f"Latest({name})"
            if servable is None:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
            servable.acquire()
            return servable

    def predict(
        self,
        name: str,
        inputs: Mapping[str, Any],
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        output_filter: Iterable[str] = (),
        timeout: float | None = None,
        decode: Callable[[Any], np.ndarray] | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Run a signature; returns the version that answered and the outputs by alias.

        ``inputs`` are arrays, or what ``decode`` turns into arrays (the double passes TensorProtos
        and ``tf.make_ndarray``): they are parsed only after the servable and signature are found.
        """
        servable = self._resolve(name, version, label)
        try:
            outputs = servable.predict(signature, inputs, output_filter=output_filter, timeout=timeout, decode=decode)
            return servable.version, outputs
        finally:
            servable.release()

    def signature_defs(self, name: str, *, version: int | None = None, label: str | None = None) -> tuple[int, dict]:
        servable = self._resolve(name, version, label)
        try:
            return servable.version, servable.signature_defs
        finally:
            servable.release()

    def classify(
        self,
        name: str,
        examples: Any,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Classify (classifier.cc RunClassify): ``examples`` (an ``Input`` of either message set) through a
        classification signature; the version that answered, and the ``classes`` and/or ``scores`` outputs."""
        servable = self._resolve(name, version, label)
        try:
            return servable.version, example_runs.classify(servable, signature, examples, timeout)
        finally:
            servable.release()

    def regress(
        self,
        name: str,
        examples: Any,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str = DEFAULT_SIGNATURE,
        timeout: float | None = None,
    ) -> tuple[int, np.ndarray]:
        """Regress (regressor.cc RunRegress): ``examples`` through a regression signature; the version that
        answered and its ``outputs`` tensor."""
        servable = self._resolve(name, version, label)
        try:
            return servable.version, example_runs.regress(servable, signature, examples, timeout)
        finally:
            servable.release()

    def multi_inference(
        self, request: Any, *, timeout: float | None = None
    ) -> tuple[int, list[tuple[Any, str, dict[str, np.ndarray] | np.ndarray]]]:
        """MultiInference (multi_inference_helper.cc): the servable named by the first task's model spec runs every
        task's classify or regress signature over one set of examples. Returns the version that answered and, per
        task, its model spec, method name and outputs (classes/scores by key, or the regression tensor)."""
        spec = request.tasks[0].model_spec if request.tasks else None
        name = spec.name if spec is not None else ""
        version = label = None
        if spec is not None:
            choice = spec.WhichOneof("version_choice")
            version = spec.version.value if choice == "version" else None
            label = spec.version_label if choice == "version_label" else None
        servable = self._resolve(name, version, label)
        try:
            return servable.version, example_runs.multi_inference_results(servable, request, timeout)
        finally:
            servable.release()

    def metadata(self, name: str, *, version: int | None = None, label: str | None = None) -> ModelMetadata:
        servable = self._resolve(name, version, label)
        try:
            return servable.metadata
        finally:
            servable.release()

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """GetModelStatus: every version the server has known of the model, newest first, END ones included."""
        with self._lock:
            states = dict(self._states.get(name, {}))
        if version is not None:
            if version not in states:
                raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    def labels(self, name: str) -> dict[str, int]:
        """The version labels in force for a model (those of the config in force)."""
        with self._lock:
            return dict(self._labels.get(name, {}))

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None and self._poller is not threading.current_thread():
            self._poller.join(timeout=30)
        with self._manager:
            with self._lock:
                models, self._models = list(self._models.values()), {}
            for model in models:
                for harness in sorted(model.harnesses.values(), key=lambda h: h.version):
                    if harness.state == "ready":
                        self._unload(model, harness)
        if self.batching is not None:
            self.batching.close()


def _not_available(what: str, failed: list[tuple[str, VersionStatus]]) -> str:
    """The message of load_servables_fast.cc / server_core.cc when models did not become available."""
    items = "".join(
        f"{{{{name: {name} version: {state.version}}} due to error: {state.error_code}: {state.error_message}}}, "
        for name, state in failed
    )
    return f"{len(failed)} {what} did not become available: {{{items}}}"
