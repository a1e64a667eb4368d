"""Gateway settings: one frozen object read from GATEWAY_* environment variables, with defaults tests override."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "GATEWAY_"
PIPELINE_SERVABLES = (
    "face_detection",
    "twingan_latent_encoder",
    "latent_search_model",
    "ugatit_selfie2anime",
)


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be told. Each field ``x`` is read from ``GATEWAY_X``."""

    backend: str = "local"  # "local" (in-process SavedModels) or "grpc" (TF Serving)
    serving_target: str = "localhost:8500"  # host:port, dns:///host:port, or a comma-separated list
    model_config: Path = PROJECT_ROOT / "serving_models.config"
    models_root: Path | None = None  # where /models/ maps locally; default: beside the config file
    timeout: float = 10.0  # default deadline of one model call, seconds
    max_attempts: int = 3  # tries of a call answered UNAVAILABLE
    metadata_ttl: float = 30.0  # seconds metadata of "latest" or a label is trusted
    poll_interval: float = 2.0  # local backend: seconds between looks for new versions and config
    warmup: bool = True  # local backend: run each version's warmup records when it loads
    session_threads: int = 0  # local backend: TF threads per session, 0 = TensorFlow decides
    async_workers: int = 8  # threads that run independent model calls concurrently
    pipeline_servables: tuple[str, ...] = PIPELINE_SERVABLES  # what /readyz waits for
    face_threshold: float = 0.7  # a face counts when its detector score is at least this
    max_pixels: int = 50_000_000  # larger photos are refused with 413
    max_upload_bytes: int = 20 * 1024 * 1024  # larger request bodies are refused with 413
    default_k: int = 5  # gallery matches when the request does not say

    def __post_init__(self) -> None:
        if self.backend not in ("local", "grpc"):
            raise ValueError(f"{ENV_PREFIX}BACKEND must be 'local' or 'grpc', not {self.backend!r}")
        for name in ("timeout", "metadata_ttl", "poll_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must not be negative")
        if self.timeout == 0:
            raise ValueError(f"{ENV_PREFIX}TIMEOUT must be positive")
        if not 0 <= self.face_threshold <= 1:
            raise ValueError(f"{ENV_PREFIX}FACE_THRESHOLD must be between 0 and 1")
        if self.max_pixels < 1 or self.max_upload_bytes < 1 or not 1 <= self.default_k <= 100:
            raise ValueError(
                f"{ENV_PREFIX}MAX_PIXELS and {ENV_PREFIX}MAX_UPLOAD_BYTES must be positive, "
                f"{ENV_PREFIX}DEFAULT_K between 1 and 100"
            )
        if self.max_attempts < 1 or self.async_workers < 1:
            raise ValueError(f"{ENV_PREFIX}MAX_ATTEMPTS and {ENV_PREFIX}ASYNC_WORKERS must be at least 1")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then GATEWAY_* variables, then ``overrides`` (field names, any case)."""
        environ = os.environ if environ is None else environ
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, field in fields.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(name, field.type, raw)
        for key, value in (overrides or {}).items():
            name = key.lower().removeprefix(ENV_PREFIX.lower())
            if name not in fields:
                raise ValueError(f"unknown gateway setting {key!r}; known: {', '.join(sorted(fields))}")
            values[name] = _coerce(name, fields[name].type, value) if isinstance(value, str) else value
        return cls(**values)


def _coerce(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    raw = raw.strip()
    try:
        if kind.startswith("bool"):
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw) if raw else None
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.split(' ')[0]}") from None
    return raw
