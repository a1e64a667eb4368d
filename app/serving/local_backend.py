"""The embedded backend: the servables of serving_models.config run in this process, no TF Serving needed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.errors import ServingStatus, ServingUnavailable, serving_errors, wire_message
from app.serving.base import (
    Backend,
    ModelRef,
    Served,
    ServingConfigState,
    SignatureMetadata,
    VersionStatus,
    fill_classification_result,
    fill_regression_result,
)
from app.serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)
from app.serving.runtime import DEFAULT_LOAD_RETRY_INTERVAL, DEFAULT_MAX_LOAD_RETRIES, ModelRuntime


class LocalBackend(Backend):
    """Backend over an in-process ModelRuntime; errors come out as the gRPC backend's would.

    It starts a runtime over ``config_path``, or serves ``runtime``, one that someone else owns (the model
    server's REST port shares its gRPC port's): closing the backend then leaves that runtime running.
    """

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        runtime: ModelRuntime | None = None,
        models_root: Path | None = None,
        timeout: float | None = 10.0,  # seconds per call; None: no deadline
        poll_interval: float = 1.0,
        warmup: bool = True,
        session_threads: int = 0,
        async_workers: int = 8,
        max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
        load_retry_interval: float = DEFAULT_LOAD_RETRY_INTERVAL,
        allow_labels_for_unavailable: bool = False,
        force_allow_labels_for_unavailable: bool = False,
    ) -> None:
        super().__init__(async_workers=async_workers)
        self.timeout = timeout
        self._owns_runtime = runtime is None
        if runtime is not None:
            self.runtime = runtime
            return
        if config_path is None:
            raise ValueError("give a config path or a runtime")
        try:
            self.runtime = ModelRuntime(
                config_path,
                models_root=models_root,
                poll_interval=poll_interval,
                warmup=warmup,
                session_threads=session_threads,
                max_load_retries=max_load_retries,
                load_retry_interval=load_retry_interval,
                allow_labels_for_unavailable=allow_labels_for_unavailable,
                force_allow_labels_for_unavailable=force_allow_labels_for_unavailable,
            )
        except ServingStatus as exc:  # tensorflow_model_server would exit: "Failed to start server. Error: ..."
            super().close()
            raise ServingUnavailable(
                f"the model server refused to start with {config_path}: {exc.status.name}: {wire_message(exc.message)}",
                retry_after=None,
            ) from exc

    def predict(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        return self.predict_versioned(ref, inputs, timeout).outputs

    def predict_versioned(
        self, ref: ModelRef, inputs: Mapping[str, np.ndarray], timeout: float | None = None
    ) -> Served:
        with serving_errors(ref.name):
            served, outputs = self.runtime.predict(
                ref.name,
                inputs,
                version=ref.version,
                label=ref.label,
                signature=ref.signature,
                timeout=self.timeout if timeout is None else timeout,
            )
        return Served(outputs, served)

    def metadata(self, ref: ModelRef) -> SignatureMetadata:
        with serving_errors(ref.name):
            model = self.runtime.metadata(ref.name, version=ref.version, label=ref.label)
        return model.signature(ref.signature)

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        with serving_errors(name):
            return self.runtime.status(name, version)

    def get_model_metadata(self, ref: ModelRef) -> get_model_metadata_pb2.GetModelMetadataResponse:
        with serving_errors(ref.name):
            version, signature_defs = self.runtime.signature_defs(ref.name, version=ref.version, label=ref.label)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in signature_defs.items():  # TensorFlow's messages: handed across as bytes
            signature_map.signature_def[key].ParseFromString(signature.SerializeToString())
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = ref.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(signature_map)
        return response

    def classify(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> classification_pb2.ClassificationResponse:
        return self._examples_call(
            self.runtime.classify, ref, examples, timeout,
            classification_pb2.ClassificationResponse(), fill_classification_result,
        )  # fmt: skip

    def regress(
        self, ref: ModelRef, examples: input_pb2.Input, timeout: float | None = None
    ) -> regression_pb2.RegressionResponse:
        return self._examples_call(
            self.runtime.regress, ref, examples, timeout, regression_pb2.RegressionResponse(), fill_regression_result
        )

    def _examples_call(self, run, ref: ModelRef, examples: input_pb2.Input, timeout: float | None, response, fill):
        """One Classify or Regress call on the runtime (``run``); ``fill`` writes its outputs into ``response``."""
        with serving_errors(ref.name):
            version, outputs = run(
                ref.name, examples, version=ref.version, label=ref.label, signature=ref.signature,
                timeout=self.timeout if timeout is None else timeout,
            )  # fmt: skip
        response.model_spec.CopyFrom(_answered_spec(ref, version))
        fill(response.result, outputs)
        return response

    def labels(self, name: str) -> dict[str, int]:
        return self.runtime.labels(name)

    def config_state(self) -> ServingConfigState:
        config = self.runtime.config
        names = config.names if config is not None else ()
        return ServingConfigState(
            labels={name: self.runtime.labels(name) for name in names}, refused=self.runtime.config_refusal
        )

    def close(self) -> None:
        super().close()
        if self._owns_runtime:
            self.runtime.close()


def _answered_spec(ref: ModelRef, version: int) -> model_pb2.ModelSpec:
    """MakeModelSpec: the model spec of an answer, with the version that gave it."""
    spec = model_pb2.ModelSpec(name=ref.name, signature_name=ref.signature)
    spec.version.value = version
    return spec
