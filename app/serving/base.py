"""The serving interface: which servable to call (ModelRef), what it looks like (metadata), and the Backend protocol.

Two backends implement it: ``grpc_backend.GrpcBackend`` (TF Serving over gRPC)
and ``local_backend.LocalBackend`` (the same SavedModels run in-process). Every
failure leaves a backend as an ``app.errors.GatewayError``.
"""

from __future__ import annotations

import abc
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from app.errors import BadInput, UnknownSignature
from app.serving import tensors

if TYPE_CHECKING:  # only named in hints: a SignatureDef of either set is read by its fields
    from app.serving.protos.tensorflow.core.protobuf import meta_graph_pb2
    from app.serving.protos.tensorflow_serving.apis import (
        classification_pb2,
        get_model_metadata_pb2,
        input_pb2,
        regression_pb2,
    )

DEFAULT_SIGNATURE = "serving_default"
T = TypeVar("T")
# What a servable name or a version label is made of, wherever one is read (serving_models.config, the pipeline
# file, a request, a path, a rollout arm); a label is 1-64 of them. The patterns are JSON Schema's (pydantic's and
# the OpenAPI document's); Python matches them whole (fullmatch: a trailing newline is not let through).
_NAME_CHARACTER = "[A-Za-z0-9_.-]"
SERVABLE_NAME_PATTERN = rf"^{_NAME_CHARACTER}+$"
LABEL_PATTERN = rf"^{_NAME_CHARACTER}{{1,64}}$"
LABEL_RULE = "1-64 of the characters A-Z a-z 0-9 _ . -"
_SERVABLE_NAME = re.compile(SERVABLE_NAME_PATTERN)
_LABEL = re.compile(LABEL_PATTERN)
# A version number is read from at most this many ASCII digits (it fits an int64, as TF Serving's does).
MAX_VERSION_DIGITS = 18


def is_label(text: object) -> bool:
    """Whether ``text`` can be a version label."""
    return isinstance(text, str) and _LABEL.fullmatch(text) is not None


def is_servable_name(text: object) -> bool:
    """Whether ``text`` can name a servable."""
    return isinstance(text, str) and _SERVABLE_NAME.fullmatch(text) is not None


def version_number(text: str) -> int | None:
    """The version number ``text`` spells (ASCII digits only, at most MAX_VERSION_DIGITS of them), else None."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_VERSION_DIGITS:
        return int(text)
    return None


@dataclass(frozen=True)
class ModelRef:
    """Names one servable: a model, optionally pinned to a version or a version label, and a signature."""

    name: str
    version: int | None = None
    label: str | None = None
    signature: str = DEFAULT_SIGNATURE

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise BadInput("a model name is required")
        if self.version is not None and self.label is not None:
            raise BadInput(f"{self.name}: give a version or a version label, not both")
        if self.version is not None and (
            isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0
        ):
            raise BadInput(f"{self.name}: version must be a non-negative integer, got {self.version!r}")
        if self.label is not None and not is_label(self.label):
            raise BadInput(f"{self.name}: version label must be 1-64 of [A-Za-z0-9_.-], got {self.label!r}")
        if not self.signature:
            raise BadInput(f"{self.name}: a signature name is required")

    def __str__(self) -> str:
        if self.version is not None:
            pin = f"@{self.version}"
        elif self.label is not None:
            pin = f"@{self.label}"
        else:
            pin = ""
        return f"{self.name}{pin}[{self.signature}]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature. ``shape`` is None for unknown rank; unknown dims are None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if self.shape is None:
            return True
        return len(shape) == len(self.shape) and all(
            want is None or want == got for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True)
class SignatureMetadata:
    """What a servable's signature takes and returns, keyed by the signature's tensor aliases."""

    model: str
    version: int
    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    outputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    # Inputs the signature stores a default for (SignatureDef.defaults): a request may leave them out.
    defaults: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ModelMetadata:
    """Every signature of one loaded version of a model."""

    model: str
    version: int
    signatures: Mapping[str, SignatureMetadata]

    def signature(self, name: str) -> SignatureMetadata:
        try:
            return self.signatures[name]
        except KeyError:
            known = ", ".join(sorted(self.signatures)) or "none"
            raise UnknownSignature(
                f"{self.model} version {self.version}: Serving signature key {name!r} not found (signatures: {known})"
            ) from None


@dataclass(frozen=True)
class VersionStatus:
    """One version of a model as TF Serving reports it: state is START, LOADING, AVAILABLE, UNLOADING or END."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


def _tensor_spec(alias: str, info: meta_graph_pb2.TensorInfo) -> TensorSpec:
    if info.tensor_shape.unknown_rank:
        shape = None
    else:
        shape = tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    return TensorSpec(name=alias, dtype=tensors.numpy_dtype(info.dtype), shape=shape)


def metadata_from_signature_defs(
    model: str, version: int, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
) -> ModelMetadata:
    """Build ModelMetadata from the SignatureDef map TF Serving returns (or a MetaGraphDef holds).

    Only fields are read, so the SignatureDefs may be ``app.serving.protos``' (the gRPC backend)
    or TensorFlow's own (the embedded runtime reads them from a loaded MetaGraphDef).
    """
    signatures = {}
    for sig_name, sig in signature_defs.items():
        if sig_name.startswith("__"):  # e.g. "__saved_model_init_op": not a callable signature
            continue
        signatures[sig_name] = SignatureMetadata(
            model=model,
            version=version,
            name=sig_name,
            method_name=sig.method_name,
            inputs={alias: _tensor_spec(alias, info) for alias, info in sig.inputs.items()},
            outputs={alias: _tensor_spec(alias, info) for alias, info in sig.outputs.items()},
            defaults=frozenset(sig.defaults) & frozenset(sig.inputs),
        )
    return ModelMetadata(model=model, version=version, signatures=signatures)


@dataclass(frozen=True)
class ServingConfigState:
    """What the model server made of its config file: the version labels in force, and why it refused the newest
    file (None: that file is in force). A refused file leaves the previous one serving."""

    labels: Mapping[str, Mapping[str, int]]
    refused: str | None = None


def fill_classification_result(
    result: classification_pb2.ClassificationResult, outputs: Mapping[str, np.ndarray]
) -> None:
    """PostProcessClassificationResult's conversion (classifier.cc), once its checks have passed: per example, one
    (label, score) per class from the signature's ``classes`` and ``scores`` outputs; a missing one leaves its field
    at its default. ``result`` may be a message of either set (only fields are touched)."""
    classes, scores = outputs.get("classes"), outputs.get("scores")
    shaped = classes if classes is not None else scores
    if shaped is None:
        return
    for example in range(shaped.shape[0]):
        entry = result.classifications.add()
        for index in range(shaped.shape[1]):
            item = entry.classes.add()
            if classes is not None:
                label = classes[example, index]
                # A proto3 string: bytes that are not UTF-8 could not be sent on, so they are replaced.
                item.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[example, index])


def fill_regression_result(result: regression_pb2.RegressionResult, output: np.ndarray) -> None:
    """PostProcessRegressionResult's conversion (regressor.cc): one value per example, from the flat output."""
    for value in np.asarray(output, dtype=np.float32).ravel().tolist():
        result.regressions.add().value = value


class Served(NamedTuple):
    """What a Predict call returned, and which version of the servable answered it (None: not said)."""

    outputs: dict[str, np.ndarray]
    version: int | None


class Backend(abc.ABC):
    """Calls servables. Implementations are thread-safe; every failure is raised as a GatewayError."""

    def __init__(self, *, async_workers: int = 8) -> None:
        self._async_workers = async_workers
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    @abc.abstractmethod
    def predict(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run one Predict call; ``timeout`` (seconds) overrides the backend's default deadline."""

    def predict_versioned(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> Served:
        """``predict``, and the version that answered: "latest" or a label may move between two calls, so
        the version of a result is the one the server names in its answer, not one looked up before."""
        return Served(self.predict(ref, inputs, timeout), None)

    def predict_async(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> Future[dict[str, np.ndarray]]:
        """Start a Predict call and return at once; the future yields what ``predict`` would."""
        return self.submit(self.predict, ref, inputs, timeout)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the backend's thread pool: a branch of model calls that runs beside others."""
        return self._pool().submit(fn, *args)

    @abc.abstractmethod
    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Every version of the model the server knows, newest first (TF Serving's order), END ones included; with
        ``version``, that version's status alone (NOT_FOUND "Could not find version ..." when it has none)."""

    @abc.abstractmethod
    def get_model_metadata(self, ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """GetModelMetadata as TF Serving answers it: the version the ref resolves to and all its SignatureDefs
        (``__saved_model_init_op`` and all), for a surface that hands them on as they are. Asked afresh each time."""

    @abc.abstractmethod
    def classify(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> classification_pb2.ClassificationResponse:
        """Classify: tf.Examples through the ref's classification signature (classes and/or scores per example)."""

    @abc.abstractmethod
    def regress(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> regression_pb2.RegressionResponse:
        """Regress: tf.Examples through the ref's regression signature (one value per example)."""

    def config_state(self) -> ServingConfigState | None:
        """The labels in force and why the newest model config was refused, when the server can tell.

        TF Serving's API tells neither (a refused config is only in its log): None. The embedded
        runtime knows both.
        """
        return None

    @abc.abstractmethod
    def metadata(self, ref: ModelRef) -> SignatureMetadata:
        """Inputs and outputs of the ref's signature on the version the ref resolves to."""

    def close(self) -> None:
        """Release threads, channels and sessions. Safe to call twice."""
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._async_workers, thread_name_prefix=type(self).__name__
                )
            return self._executor

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
