"""Gateway settings: one frozen object read from GATEWAY_* environment variables, with defaults tests override."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "GATEWAY_"
# Per client address (or API key), one count shared by the four pipeline endpoints: bursts up to 100 a
# second, 50 a second sustained over each minute. Above what one person with a browser or one
# ordinary script sends; a 16-client loopback soak on 2 CPU cores measured about 25 a second. All
# loopback clients are one client, so a load test that goes faster sets GATEWAY_RATE_LIMIT="" (none).
DEFAULT_RATE_LIMIT = "100/second;3000/minute"
# Seconds the rate limit waits for Redis to connect or answer, unless its URI's socket_timeout and
# socket_connect_timeout say otherwise (docs/production.md): a Redis on the same network answers in
# well under a millisecond, and a request never waits longer than this for one that hangs.
RATE_LIMIT_STORAGE_TIMEOUT = 0.25
REDIS_TIMEOUT_PARAMETERS = ("socket_timeout", "socket_connect_timeout")
MIN_API_KEY_LENGTH = 16


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
    # Local backend, as TF Serving's --max_num_load_retries and --load_retry_interval_micros (seconds here): a failed
    # load is tried again this often, this far apart, while the version before it keeps serving.
    max_load_retries: int = 5
    load_retry_interval: float = 60.0
    # Local backend, as --allow_version_labels_for_unavailable_models, which docker-compose sets: a new label may name
    # a version not loaded yet; moving a label still waits for its version (docs/versions-and-labels.md).
    allow_labels_for_unavailable: bool = True
    async_workers: int = 8  # threads that run independent model calls concurrently
    # The pipeline file (stages, servables, tensors); default: pipeline.toml beside model_config, else built-in.
    pipeline_config: Path | None = None
    face_threshold: float | None = None  # overrides the pipeline file's [detect] threshold when set
    max_pixels: int = 50_000_000  # larger photos are refused with 413
    max_upload_bytes: int = 20 * 1024 * 1024  # larger request bodies are refused with 413
    default_k: int = 5  # gallery matches when the request does not say
    upload_timeout: float = 60.0  # seconds a request body may take to arrive (under gunicorn), then 408; 0 = no limit
    # Abuse resistance (app/security.py).
    rate_limit: str = DEFAULT_RATE_LIMIT  # per client, shared by the pipeline endpoints; "" = no limit
    # flask-limiter storage URI: memory:// counts per worker process; one count for every worker and pod:
    # redis://host:6379/0?socket_timeout=0.25&socket_connect_timeout=0.25 (docs/production.md)
    rate_limit_storage: str = "memory://"
    trusted_proxies: int = 0  # proxy hops whose X-Forwarded-For/-Proto are believed; 0 = the peer address
    api_keys: tuple[str, ...] = ()  # keys that open /api/ (Bearer or X-API-Key); none here or in the file = open
    api_keys_file: Path | None = None  # one key per line ("#" comments), e.g. a mounted secret
    hsts: int = 0  # Strict-Transport-Security max-age in seconds; 0 = no header (set it only behind HTTPS)
    allow_debug: bool = False  # let `flask run --debug` run; refused under gunicorn all the same
    log_level: str = "INFO"  # the gateway's own log lines; TensorFlow's start-up notices show only at DEBUG

    def __post_init__(self) -> None:
        if self.backend not in ("local", "grpc"):
            raise ValueError(f"{ENV_PREFIX}BACKEND must be 'local' or 'grpc', not {self.backend!r}")
        non_negative = ("timeout", "metadata_ttl", "poll_interval", "upload_timeout")
        for name in (*non_negative, "max_load_retries", "load_retry_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must not be negative")
        if self.timeout == 0:
            raise ValueError(f"{ENV_PREFIX}TIMEOUT must be positive")
        if self.face_threshold is not None and not 0 <= self.face_threshold <= 1:
            raise ValueError(f"{ENV_PREFIX}FACE_THRESHOLD must be between 0 and 1")
        if self.max_pixels < 1 or self.max_upload_bytes < 1 or not 1 <= self.default_k <= 100:
            raise ValueError(
                f"{ENV_PREFIX}MAX_PIXELS and {ENV_PREFIX}MAX_UPLOAD_BYTES must be positive, "
                f"{ENV_PREFIX}DEFAULT_K between 1 and 100"
            )
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"{ENV_PREFIX}LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}")
        if self.max_attempts < 1 or self.async_workers < 1:
            raise ValueError(f"{ENV_PREFIX}MAX_ATTEMPTS and {ENV_PREFIX}ASYNC_WORKERS must be at least 1")
        self._check_abuse_settings()

    def _check_abuse_settings(self) -> None:
        # Imported here: limits is only needed when settings are made, not by every importer of this module.
        from limits import parse_many
        from limits.storage import SCHEMES

        if self.rate_limit:
            try:
                parse_many(self.rate_limit)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}RATE_LIMIT={self.rate_limit!r} is not a rate limit such as '20/second;600/minute' "
                    "(empty for none)"
                ) from None
        storage = urlsplit(self.rate_limit_storage)
        shown = redacted_storage_uri(self.rate_limit_storage)
        if storage.scheme not in SCHEMES or storage.scheme.startswith("async+"):
            known = ", ".join(sorted(s for s in SCHEMES if not s.startswith("async+")))
            raise ValueError(f"{ENV_PREFIX}RATE_LIMIT_STORAGE={shown!r} is not a storage URI; schemes: {known}")
        for name, value in parse_qsl(storage.query):
            if name in REDIS_TIMEOUT_PARAMETERS and not 0 < _float_or_nan(value) <= 60:
                raise ValueError(
                    f"{ENV_PREFIX}RATE_LIMIT_STORAGE={shown!r}: {name}={value!r} must be seconds above 0 and at most "
                    f"60, e.g. {name}={RATE_LIMIT_STORAGE_TIMEOUT}"
                )
        if not 0 <= self.trusted_proxies <= 10:
            raise ValueError(f"{ENV_PREFIX}TRUSTED_PROXIES must be between 0 and 10 proxy hops")
        if self.hsts < 0:
            raise ValueError(f"{ENV_PREFIX}HSTS must not be negative (seconds; 0 = no header)")
        for key in self.api_keys:
            check_api_key(key, f"{ENV_PREFIX}API_KEYS")
        if self.api_keys_file is not None:
            read_api_keys_file(self.api_keys_file)

    def servable_root(self) -> Path:
        """The local folder that holds <servable>/<version>/ (what /models/ maps to): GATEWAY_MODELS_ROOT, else
        serving_models/ beside model_config."""
        return self.models_root or Path(self.model_config).parent / "serving_models"

    def pipeline_path(self) -> Path:
        """Where the pipeline file is read from: GATEWAY_PIPELINE_CONFIG, else pipeline.toml beside model_config."""
        return self.pipeline_config or Path(self.model_config).parent / "pipeline.toml"

    def all_api_keys(self) -> tuple[str, ...]:
        """The keys that open /api/: ``api_keys`` and those in ``api_keys_file``. Empty: the API is open."""
        from_file = read_api_keys_file(self.api_keys_file) if self.api_keys_file is not None else ()
        return tuple(dict.fromkeys((*self.api_keys, *from_file)))

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


def redacted_storage_uri(uri: str) -> str:
    """A storage URI fit for a log line or an error message: its password, if any, replaced by ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def check_api_key(key: str, where: str) -> None:
    """An API key is sent in a header: printable ASCII, no spaces or commas, long enough not to be guessed."""
    if not (key.isascii() and key.isprintable()) or any(c in key for c in ' ,"') or len(key) < MIN_API_KEY_LENGTH:
        raise ValueError(
            f"an API key in {where} is not usable: keys are at least {MIN_API_KEY_LENGTH} printable ASCII characters "
            "without spaces, commas or quotes (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
        )


def read_api_keys_file(path: Path) -> tuple[str, ...]:
    """The keys of a key file: one a line; blank lines and lines starting with # are skipped."""
    where = f"{ENV_PREFIX}API_KEYS_FILE={path}"
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where} cannot be read: {exc}") from None
    keys = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ValueError(f"{where} holds no key: leave the setting out to keep the API open")
    for key in keys:
        check_api_key(key, where)
    return keys


def _coerce(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    raw = raw.strip()
    if not raw and kind.endswith("| None"):
        return None
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
