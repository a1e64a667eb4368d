"""The embedded backend: the servables of serving_models.config run in this process, no TF Serving needed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from app.errors import serving_errors
from app.serving.base import Backend, ModelRef, Served, SignatureMetadata, VersionStatus
from app.serving.runtime import ModelRuntime


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
    ) -> None:
        super().__init__(async_workers=async_workers)
        self.timeout = timeout
        self.runtime = ModelRuntime(
            config_path,
            models_root=models_root,
            poll_interval=poll_interval,
            warmup=warmup,
            session_threads=session_threads,
        )

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

    def model_status(self, name: str) -> list[VersionStatus]:
        with serving_errors(name):
            return self.runtime.status(name)

    def labels(self, name: str) -> dict[str, int]:
        return self.runtime.labels(name)

    def close(self) -> None:
        super().close()
        self.runtime.close()
