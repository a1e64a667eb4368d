"""Gateway settings: one frozen object read from GATEWAY_* environment variables (pydantic-settings), with defaults.

Each field ``x`` is the variable ``GATEWAY_X``; ``create_app(config)`` and :meth:`Settings.load` take the
same names as overrides. A value that cannot be used is refused with a ValueError that names the variable
and says what it takes (:class:`SettingsError`).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

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
# Faces a request may ask about at once (GATEWAY_MAX_FACES), and the most that setting may allow: every face's
# crop travels in one encoder call.
DEFAULT_MAX_FACES = 16
MAX_FACES_LIMIT = 64
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingsError(ValueError):
    """Settings that cannot be used: each line names the variable and what it takes."""


def _not_negative(value: float) -> float:
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _switch(value: Any) -> Any:
    """1/0, true/false, yes/no, on/off (any case), as the docs say; anything else is refused by name."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError("must be one of 1, 0, true, false, yes, no, on, off")
    return value


def _optional(value: Any) -> Any:
    """An empty variable is the same as none."""
    return None if isinstance(value, str) and not value.strip() else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _a_file(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError("must name a file (leave it unset for the default)")
    return value


def _servable_targets(value: Any) -> Any:
    """``name=target;name=target`` as a mapping (GATEWAY_SERVABLE_TARGETS)."""
    if not isinstance(value, str):
        return value
    found: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(";")):
        if not entry:
            continue
        name, sep, target = (piece.strip() for piece in entry.partition("="))
        if not sep or not name or not target:
            raise ValueError(
                f"must be servable=target pairs separated by ';' (e.g. gallery_0=tfs-0:8500), not {entry!r}"
            )
        if name in found:
            raise ValueError(f"must give each servable one target ({name!r} has two)")
        found[name] = target
    return found


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


NonNegative = Annotated[float, AfterValidator(_not_negative)]
NonNegativeInt = Annotated[int, AfterValidator(_not_negative)]
AtLeastOne = Annotated[int, AfterValidator(_at_least_one)]
Switch = Annotated[bool, BeforeValidator(_switch)]
OptionalPath = Annotated[Path | None, BeforeValidator(_optional)]
OptionalFloat = Annotated[float | None, BeforeValidator(_optional)]
# Comma-separated in the environment (NoDecode: not JSON), a tuple in code.
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]

# Settings.load(environ=...) reads this mapping instead of os.environ (tests, and a caller with its own).
_ENVIRON: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("gateway_environ", default=None)


class _Environment(EnvSettingsSource):
    """GATEWAY_* variables from os.environ, or from the mapping Settings.load was given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        given = _ENVIRON.get()
        if given is None:
            return super()._load_env_vars()
        return {key.lower(): value for key, value in given.items()}


class Settings(BaseSettings):
    """Everything the gateway can be told. Each field ``x`` is read from ``GATEWAY_X``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", validate_default=True, validate_by_name=True
    )

    backend: Literal["local", "grpc"] = "local"  # "local" (in-process SavedModels) or "grpc" (TF Serving)
    serving_target: str = "localhost:8500"  # host:port, dns:///host:port, or a comma-separated list
    # The servable Seldon's /api/v1.0/predictions goes to (the /seldon/<namespace>/<servable>/... paths name theirs).
    seldon_servable: str | None = None
    # Servables that another TF Serving serves (e.g. each shard of a gallery on its own): servable=target;...
    servable_targets: Annotated[dict[str, str], NoDecode, BeforeValidator(_servable_targets)] = {}
    # GATEWAY_MODEL_CONFIG, the override "model_config": TF Serving's ModelServerConfig text file (pydantic keeps the
    # attribute name model_config for itself, hence the _file).
    model_config_file: Annotated[
        Path, BeforeValidator(_a_file), Field(validation_alias=ENV_PREFIX + "MODEL_CONFIG")
    ] = PROJECT_ROOT / "serving_models.config"
    models_root: OptionalPath = None  # where /models/ maps locally; default: beside the config file
    timeout: NonNegative = 10.0  # default deadline of one model call, seconds
    max_attempts: AtLeastOne = 3  # tries of a call the server side lost (UNAVAILABLE, CANCELLED, a reset stream)
    metadata_ttl: NonNegative = 30.0  # seconds metadata of "latest" or a label is trusted
    poll_interval: NonNegative = 2.0  # local backend: seconds between looks for new versions and config
    warmup: Switch = True  # local backend: run each version's warmup records when it loads
    session_threads: NonNegativeInt = 0  # local backend: TF threads per session, 0 = TensorFlow decides
    # Local backend, as TF Serving's --max_num_load_retries and --load_retry_interval_micros (seconds here): a failed
    # load is tried again this often, this far apart, while the version before it keeps serving.
    max_load_retries: NonNegativeInt = 5
    load_retry_interval: NonNegative = 60.0
    # Local backend, as --allow_version_labels_for_unavailable_models, which docker-compose sets: a new label may name
    # a version not loaded yet; moving a label still waits for its version (docs/versions-and-labels.md).
    allow_labels_for_unavailable: Switch = True
    async_workers: AtLeastOne = 8  # threads that run independent model calls concurrently
    # The pipeline file (stages, servables, tensors); default: pipeline.toml beside model_config, else built-in.
    pipeline_config: OptionalPath = None
    face_threshold: OptionalFloat = None  # overrides the pipeline file's [detect] threshold when set
    max_pixels: AtLeastOne = 50_000_000  # larger photos are refused with 413
    max_upload_bytes: AtLeastOne = 20 * 1024 * 1024  # larger request bodies are refused with 413
    default_k: Annotated[int, Field(ge=1, le=100)] = 5  # gallery matches when the request does not say
    # faces a request may ask about at once (faces=all): a photo with more gets a 400
    max_faces: Annotated[int, Field(ge=1, le=MAX_FACES_LIMIT)] = DEFAULT_MAX_FACES
    upload_timeout: NonNegative = 60.0  # seconds a request body may take to arrive (under gunicorn), then 408; 0 = none
    # Abuse resistance (app/web/security.py).
    rate_limit: str = DEFAULT_RATE_LIMIT  # per client, shared by the pipeline endpoints; "" = no limit
    # flask-limiter storage URI: memory:// counts per worker process; one count for every worker and pod:
    # redis://host:6379/0?socket_timeout=0.25&socket_connect_timeout=0.25 (docs/production.md)
    rate_limit_storage: str = "memory://"
    trusted_proxies: Annotated[int, Field(ge=0, le=10)] = 0  # proxy hops whose X-Forwarded-For/-Proto are believed
    api_keys: CommaList = ()  # keys that open /api/ (Bearer or X-API-Key); none here or in the file = open
    api_keys_file: OptionalPath = None  # one key per line ("#" comments), e.g. a mounted secret
    hsts: NonNegativeInt = 0  # Strict-Transport-Security max-age in seconds; 0 = no header (only behind HTTPS)
    allow_debug: Switch = False  # let `flask run --debug` run; refused under gunicorn all the same
    log_level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = "INFO"  # own lines

    # -- checks that need more than one field's type ------------------------------------------------

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        from limits import parse_many  # only needed when settings are made

        if value:
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f"{ENV_PREFIX}RATE_LIMIT={value!r} is not a rate limit such as '20/second;600/minute' "
                    "(empty for none)"
                ) from None
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        from limits.storage import SCHEMES

        storage = urlsplit(value)
        shown = redacted_storage_uri(value)
        if storage.scheme not in SCHEMES or storage.scheme.startswith("async+"):
            known = ", ".join(sorted(s for s in SCHEMES if not s.startswith("async+")))
            raise ValueError(f"{ENV_PREFIX}RATE_LIMIT_STORAGE={shown!r} is not a storage URI; schemes: {known}")
        for name, given in parse_qsl(storage.query):
            if name in REDIS_TIMEOUT_PARAMETERS and not 0 < _float_or_nan(given) <= 60:
                raise ValueError(
                    f"{ENV_PREFIX}RATE_LIMIT_STORAGE={shown!r}: {name}={given!r} must be seconds above 0 and at "
                    f"most 60, e.g. {name}={RATE_LIMIT_STORAGE_TIMEOUT}"
                )
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            check_api_key(key, f"{ENV_PREFIX}API_KEYS")
        return keys

    @field_validator("api_keys_file")
    @classmethod
    def _key_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_api_keys_file(path)
        return path

    @model_validator(mode="after")
    def _sensible(self) -> Settings:
        if self.timeout == 0:
            raise ValueError(f"{ENV_PREFIX}TIMEOUT must be positive")
        if self.face_threshold is not None and not 0 <= self.face_threshold <= 1:
            raise ValueError(f"{ENV_PREFIX}FACE_THRESHOLD must be between 0 and 1")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Overrides, then GATEWAY_* variables (of os.environ, or the mapping given to :meth:`load`); no .env file."""
        return init_settings, _Environment(settings_cls)

    # -- derived --------------------------------------------------------------------------------------

    def servable_root(self) -> Path:
        """The local folder that holds <servable>/<version>/ (what /models/ maps to): GATEWAY_MODELS_ROOT, else
        serving_models/ beside model_config."""
        return self.models_root or Path(self.model_config_file).parent / "serving_models"

    def pipeline_path(self) -> Path:
        """Where the pipeline file is read from: GATEWAY_PIPELINE_CONFIG, else pipeline.toml beside model_config."""
        return self.pipeline_config or Path(self.model_config_file).parent / "pipeline.toml"

    def all_api_keys(self) -> tuple[str, ...]:
        """The keys that open /api/: ``api_keys`` and those in ``api_keys_file``. Empty: the API is open."""
        from_file = read_api_keys_file(self.api_keys_file) if self.api_keys_file is not None else ()
        return tuple(dict.fromkeys((*self.api_keys, *from_file)))

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Each setting's environment variable, by field name (GATEWAY_MODEL_CONFIG for model_config_file)."""
        return {name: _variable(name) for name in cls.model_fields}

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Defaults, then GATEWAY_* variables (``environ``, else os.environ), then ``overrides`` (field names, any
        case, ``GATEWAY_`` prefix allowed). Raises :class:`SettingsError` naming every variable that is wrong."""
        known = {name: name for name in cls.model_fields} | {"model_config": "model_config_file"}
        values: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            name = key.lower().removeprefix(ENV_PREFIX.lower())
            if name not in known:
                raise SettingsError(f"unknown gateway setting {key!r}; known: {', '.join(sorted(known))}")
            values[known[name]] = value
        token = _ENVIRON.set(environ)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(_said(error) for error in exc.errors())) from None
        finally:
            _ENVIRON.reset(token)


def _variable(name: str) -> str:
    return ENV_PREFIX + ("MODEL_CONFIG" if name == "model_config_file" else name.upper())


def _said(error: Any) -> str:
    """One pydantic error as a person reads it: the variable, the value and what it takes."""
    location = error.get("loc") or ()
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if not location:  # a check across fields: its message names its variables
        return message
    field = str(location[0])
    variable = (
        ENV_PREFIX + "MODEL_CONFIG"
        if field in ("model_config_file", ENV_PREFIX + "MODEL_CONFIG")
        else (_variable(field))
    )
    if ENV_PREFIX in message:  # a check that words its own message
        return message
    if error.get("type") == "value_error":
        return f"{variable} {message}"
    # A value of the wrong kind: the variable, what it was (secrets are never a typed field) and what it takes.
    return f"{variable}={error.get('input')!r} is not valid: {message}"


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
