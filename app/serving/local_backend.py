"""The embedded backend: the servables of serving_models.config run in this process, no TF Serving needed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from app.errors import ServingStatus, ServingUnavailable, from_serving_status
from app.serving.base import Backend, ModelRef, Served, ServingConfigState, SignatureMetadata, VersionStatus
from app.serving.runtime import DEFAULT_LOAD_RETRY_INTERVAL, DEFAULT_MAX_LOAD_RETRIES, ModelRuntime, wire_message


@contextlib.contextmanager
def _as_on_the_wire(servable: str) -> Iterator[None]:
    """A ServingStatus raised inside becomes the GatewayError the gRPC backend makes of TF Serving's answer."""
    try:
        yield
    except ServingStatus as exc:
        raise from_serving_status(exc.status, wire_message(exc.message), servable=servable) from exc


class LocalBackend(Backend):
    """Backend over an in-process ModelRuntime; errors come out as the gRPC backend's would."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        models_root: Path | None = None,
        timeout: float = 10.0,
        poll_interval: float = 1.0,
        warmup: bool = True,
        session_threads: int = 0,
        async_workers: int = 8,
        max_load_retries: int = DEFAULT_MAX_LOAD_RETRIES,
        load_retry_interval: float = DEFAULT_LOAD_RETRY_INTERVAL,
        allow_labels_for_unavailable: bool = False,
    ) -> None:
        super().__init__(async_workers=async_workers)
        self.timeout = timeout
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
        with _as_on_the_wire(ref.name):
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
        with _as_on_the_wire(ref.name):
            model = self.runtime.metadata(ref.name, version=ref.version, label=ref.label)
        return model.signature(ref.signature)

    def model_status(self, name: str) -> list[VersionStatus]:
        with _as_on_the_wire(name):
            return self.runtime.status(name)

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
        self.runtime.close()
