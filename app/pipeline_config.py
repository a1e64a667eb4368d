"""The pipeline file (``pipeline.toml``): which servable, signature and tensors each stage uses, and how it is fed.

Wiring is data, not code: a user whose trained models use other names, ranges or
conventions describes them here and never edits the gateway. The file sits beside
``serving_models.config`` (``GATEWAY_PIPELINE_CONFIG`` names another); when it is
absent, the defaults below (the demo servables' names) apply. It is read with
``tomllib`` and validated by the pydantic models below, so a bad file gets one
message that names the file, the key and the fix (:class:`PipelineConfigError`).
Whether the servables themselves fit is checked against their metadata by
``app.pipeline_check``.

Any stage may also roll a new version out (``app.rollout``): ``traffic`` splits its
requests between arms (version labels, or version numbers written as strings), the
first arm being the stable one, and ``shadow`` names an arm that gets a copy of each
request once the answer is ready, to be compared and never returned::

    [search]
    traffic = { stable = 90, canary = 10 }
    shadow = "canary"

    [detect]                          # the face detector: gets the photo
    servable = "face_detection"
    inputs = { image = "input_images" }
    outputs = { boxes = "boxes", scores = "scores", count = "num_detections" }
    [encode]                          # face crop -> latent
    [search]                          # latent + k -> the k nearest gallery faces
    [translate]                       # face crop -> anime image
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from app.images import FACE_CROP_SCALE
from app.serving.base import (
    DEFAULT_SIGNATURE,
    LABEL_RULE,
    MAX_VERSION_DIGITS,
    SERVABLE_NAME_PATTERN,
    ModelRef,
    is_label,
)

__all__ = [
    "DEFAULT_PIPELINE",
    "PIPELINE_FILENAME",
    "STAGE_NAMES",
    "DetectStage",
    "EncodeStage",
    "ImageFeed",
    "PipelineConfig",
    "PipelineConfigError",
    "SearchStage",
    "StageConfig",
    "TranslateStage",
    "arm_pin",
    "load_pipeline_config",
    "parse_pipeline_config",
]

PIPELINE_FILENAME = "pipeline.toml"
STAGE_NAMES = ("detect", "encode", "search", "translate")
ServableName = Annotated[str, Field(min_length=1, max_length=256, pattern=SERVABLE_NAME_PATTERN)]
TensorAlias = Annotated[str, Field(min_length=1, max_length=256)]
TOTAL_WEIGHT = 100


def arm_pin(name: str) -> tuple[int | None, str | None]:
    """(version, label) an arm name stands for: digits are a version number, anything else a version label.

    Raises ValueError, in the pipeline file's words, for a name that is neither.
    """
    # An arm is a version label as TF Serving takes it, or a version number (digits only, which a label may be too).
    if not is_label(name):
        raise ValueError(f"{name!r} is neither a version label ({LABEL_RULE}) nor a version number")
    if name.isascii() and name.isdigit():
        if len(name) > MAX_VERSION_DIGITS:
            raise ValueError(f"version {name} has more than {MAX_VERSION_DIGITS} digits")
        return int(name), None
    return None, name


def _arm_text(value: Any) -> Any:
    """``shadow = 2`` is read as the version "2", as a traffic key would be."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class PipelineConfigError(ValueError):
    """A pipeline file that cannot be used: the file, the key, and what to change."""

    def __init__(self, path: str | Path, key: str, reason: str) -> None:
        super().__init__(str(path), key, reason)
        self.path = str(path)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.path}: [{self.key}]" if self.key else self.path
        return f"{where}: {self.reason}"


class _Strict(BaseModel):
    """Unknown keys are errors: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Roles(_Strict):
    """Tensor aliases by role; read like a mapping (``stage.inputs["image"]``) as well as by attribute."""

    def __getitem__(self, role: str) -> str:
        value = getattr(self, role, None)
        if value is None:
            raise KeyError(role)
        return value

    def get(self, role: str, default: str | None = None) -> str | None:
        value = getattr(self, role, None)
        return default if value is None else value

    def items(self) -> Iterator[tuple[str, str]]:
        return ((role, alias) for role, alias in self if alias is not None)

    def values(self) -> list[str]:
        return [alias for _, alias in self.items()]

    def __contains__(self, role: object) -> bool:
        return getattr(self, str(role), None) is not None


class ImageFeed(_Strict):
    """How an image goes into an input, or comes out of an output.

    The dtype is the servable's own (from its metadata): uint8 inputs get the pixels as
    they are; float inputs get them mapped from 0..255 onto ``range`` (a float output is
    mapped back from it). ``channels`` is the order the model expects. ``size`` is the
    [height, width] to resize to when the input's metadata does not fix one.
    """

    range: tuple[float, float] = (0.0, 255.0)
    channels: Literal["RGB", "BGR"] = "RGB"
    size: tuple[Annotated[int, Field(ge=1, le=8192)], Annotated[int, Field(ge=1, le=8192)]] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ImageFeed:
        low, high = self.range
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise ValueError(f"range must be [low, high] with low < high, got [{low:g}, {high:g}]")
        return self


class StageConfig(_Strict):
    """What every stage has: a servable, a signature, and the tensor aliases it reads and writes by role."""

    servable: ServableName
    signature: TensorAlias = DEFAULT_SIGNATURE
    inputs: Roles
    outputs: Roles
    image: ImageFeed = ImageFeed()
    # A rollout: arm (label or version) -> share of the requests in percent; the first arm is the stable one.
    traffic: dict[str, Annotated[StrictInt, Field(ge=0, le=TOTAL_WEIGHT)]] | None = None
    # An arm (of the split, or any other label or version) that gets a copy of each request, compared, never returned.
    shadow: Annotated[str | None, BeforeValidator(_arm_text)] = None

    role: ClassVar[str] = ""
    image_roles: ClassVar[tuple[str, ...]] = ()  # inputs (and outputs) that carry images

    @field_validator("traffic")
    @classmethod
    def _split(cls, traffic: dict[str, int] | None) -> dict[str, int] | None:
        if traffic is None:
            return None
        if not traffic:
            raise ValueError("has no arm: name at least one, e.g. traffic = { stable = 90, canary = 10 }")
        versions: dict[int, str] = {}
        for name in traffic:
            version, _ = arm_pin(name)
            if version is not None and version in versions:
                raise ValueError(f"{versions[version]!r} and {name!r} are the same version: keep one of them")
            if version is not None:
                versions[version] = name
        total = sum(traffic.values())
        if total != TOTAL_WEIGHT:
            shares = ", ".join(f"{name} = {weight}" for name, weight in traffic.items())
            raise ValueError(
                f"the weights ({shares}) add up to {total}, not {TOTAL_WEIGHT}: change them so that they add up "
                f"to {TOTAL_WEIGHT}, e.g. traffic = {{ stable = 90, canary = 10 }}"
            )
        return traffic

    @field_validator("shadow")
    @classmethod
    def _shadow_arm(cls, shadow: str | None) -> str | None:
        if shadow is not None:
            arm_pin(shadow)
        return shadow

    @model_validator(mode="after")
    def _shadow_is_compared_with_something(self) -> StageConfig:
        if self.shadow is None or not self.traffic:
            return self
        weighted = [name for name, weight in self.traffic.items() if weight > 0]
        if weighted == [self.shadow] or (len(weighted) == 1 and arm_pin(weighted[0]) == arm_pin(self.shadow)):
            raise ValueError(
                f"shadow = {self.shadow!r} is the arm that serves every request, so it would be compared with "
                "itself: name another version label or version"
            )
        return self

    def ref(
        self,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = None,
        servable: str | None = None,
    ) -> ModelRef:
        """A call of this stage: its servable (or one of its shards), version or label, and signature."""
        return ModelRef(servable or self.servable, version=version, label=label, signature=signature or self.signature)

    @property
    def servables(self) -> tuple[str, ...]:
        """Every servable the stage calls (its shards, for a sharded search)."""
        return (self.servable,)

    def for_servable(self, servable: str) -> StageConfig:
        """This stage as it calls one of its servables (a shard)."""
        return self.model_copy(update={"servable": servable})


class Cropped(StageConfig):
    """A stage fed the face: the square box crop (``crop_scale`` times the box) or the eye-levelled aligned chip."""

    crop: Literal["box", "aligned"] = "box"
    crop_scale: Annotated[float, Field(ge=1.0, le=4.0)] = FACE_CROP_SCALE


class DetectInputs(Roles):
    image: TensorAlias = "input_images"


class DetectOutputs(Roles):
    boxes: TensorAlias = "boxes"
    scores: TensorAlias = "scores"
    # How many of the boxes are detections; without it every box is read (and its score decides).
    count: TensorAlias | None = None
    # Face landmarks (y, x) per box, [N, points, 2]: needed by an encoder fed the aligned crop.
    keypoints: TensorAlias | None = None


class Boxes(_Strict):
    """How the detector writes a box: corner order and units."""

    order: Literal["yxyx", "xyxy"] = "yxyx"
    units: Literal["normalized", "pixels"] = "normalized"


class DetectStage(StageConfig):
    role: ClassVar[str] = "detect"
    image_roles: ClassVar[tuple[str, ...]] = ("image",)

    servable: ServableName = "face_detection"
    inputs: DetectInputs = DetectInputs()
    outputs: DetectOutputs = DetectOutputs()
    boxes: Boxes = Boxes()
    # A face counts when its score is at least this (GATEWAY_FACE_THRESHOLD overrides it).
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.7
    # The photo is scaled down to this long side before it is sent (the detector resizes it again anyway).
    max_side: Annotated[int, Field(ge=32, le=8192)] = 640


class EncodeInputs(Roles):
    image: TensorAlias = "input_images"


class EncodeOutputs(Roles):
    latent: TensorAlias = "output"


class EncodeStage(Cropped):
    role: ClassVar[str] = "encode"
    image_roles: ClassVar[tuple[str, ...]] = ("image",)

    servable: ServableName = "twingan_latent_encoder"
    inputs: EncodeInputs = EncodeInputs()
    outputs: EncodeOutputs = EncodeOutputs()


class SearchInputs(Roles):
    latent: TensorAlias = "target_latent"
    k: TensorAlias = "k_num"


class SearchOutputs(Roles):
    distances: TensorAlias = "xvals"
    indices: TensorAlias = "indices"
    filenames: TensorAlias = "filenames"


class SearchSignatures(Roles):
    # A signature with no inputs that answers the gallery's size; without one, k is checked by the model itself.
    size: TensorAlias | None = None


class DistanceReading(_Strict):
    """What a distance means for this encoder, as the result page explains it: below ``same_below`` the faces
    are likely one person, above ``different_above`` likely two. Always a ranking, never a verdict."""

    same_below: Annotated[float, Field(ge=0.0)] | None = None
    different_above: Annotated[float, Field(ge=0.0)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> DistanceReading:
        if self.same_below is not None and self.different_above is not None and self.same_below > self.different_above:
            raise ValueError(
                f"same_below ({self.same_below:g}) must not be above different_above ({self.different_above:g})"
            )
        return self


class SearchStage(StageConfig):
    role: ClassVar[str] = "search"

    servable: ServableName = "latent_search_model"
    inputs: SearchInputs = SearchInputs()
    outputs: SearchOutputs = SearchOutputs()
    signatures: SearchSignatures = SearchSignatures()
    reading: DistanceReading = DistanceReading()
    # A gallery split over several servables (build-index --shards N writes them): each is searched at once and
    # the k nearest of all are merged. Then `servable` only names the gallery (build-index names shards after it).
    shards: tuple[ServableName, ...] = ()
    # A shard that cannot answer: the request fails with 503 naming it (false), or the others answer and the
    # answer says which shard was missing (true).
    partial: bool = False

    @property
    def servables(self) -> tuple[str, ...]:
        return self.shards or (self.servable,)

    @model_validator(mode="after")
    def _sharded(self) -> SearchStage:
        if not self.shards:
            if self.partial:
                raise ValueError("partial = true needs shards: name the gallery's shard servables, or remove partial")
            return self
        if len(self.shards) < 2:
            raise ValueError(f"shards names {len(self.shards)} servable: a sharded gallery has at least two")
        if len(set(self.shards)) != len(self.shards):
            raise ValueError("shards names a servable twice: each shard is its own servable")
        if self.traffic or self.shadow:
            raise ValueError(
                "traffic and shadow split one servable between versions; a sharded gallery's versions move "
                "together: pin versions with the request's search_version instead, or remove shards"
            )
        return self


class TranslateInputs(Roles):
    image: TensorAlias = "input_images"


class TranslateOutputs(Roles):
    image: TensorAlias = "output_images"


class TranslateStage(Cropped):
    role: ClassVar[str] = "translate"
    image_roles: ClassVar[tuple[str, ...]] = ("image",)

    servable: ServableName = "ugatit_selfie2anime"
    inputs: TranslateInputs = TranslateInputs()
    outputs: TranslateOutputs = TranslateOutputs()
    image: ImageFeed = ImageFeed(range=(-1.0, 1.0))


class PipelineConfig(_Strict):
    """The four stages. Each table of the file is one stage; a table left out keeps its defaults."""

    detect: DetectStage = DetectStage()
    encode: EncodeStage = EncodeStage()
    search: SearchStage = SearchStage()
    translate: TranslateStage = TranslateStage()

    source: str = Field(default="(defaults)", exclude=True)

    @property
    def stages(self) -> dict[str, StageConfig]:
        """The stages by name, in the order the pipeline runs them."""
        return {name: getattr(self, name) for name in STAGE_NAMES}

    def __getitem__(self, name: str) -> StageConfig:
        if name not in STAGE_NAMES:
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:  # type: ignore[override]  # iterate like a mapping of stages
        return iter(STAGE_NAMES)

    def items(self) -> Iterator[tuple[str, StageConfig]]:
        return iter(self.stages.items())

    def values(self) -> list[StageConfig]:
        return list(self.stages.values())

    def __len__(self) -> int:
        return len(STAGE_NAMES)

    @property
    def servables(self) -> tuple[str, ...]:
        """Each servable the pipeline calls, once, in stage order: what readiness waits for."""
        return tuple(dict.fromkeys(servable for stage in self.stages.values() for servable in stage.servables))

    def describe(self) -> dict[str, Any]:
        """The wiring as JSON, for /api/v1/models and check-models."""
        return {"source": self.source, "stages": self.model_dump(mode="json")}


DEFAULT_PIPELINE = PipelineConfig()


def load_pipeline_config(path: str | Path | None, *, required: bool = False) -> PipelineConfig:
    """Read and validate a pipeline file; a missing file gives the defaults unless ``required``."""
    if path is None:
        return DEFAULT_PIPELINE
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise PipelineConfigError(path, "", "no such file (GATEWAY_PIPELINE_CONFIG names it)") from None
        return DEFAULT_PIPELINE.model_copy(update={"source": f"built-in defaults (no {path})"})
    except OSError as exc:
        raise PipelineConfigError(path, "", f"cannot be read: {exc.strerror or exc}") from None
    return parse_pipeline_config(text, source=path)


def parse_pipeline_config(text: str | bytes, *, source: str | Path = "pipeline.toml") -> PipelineConfig:
    """Validate the text of a pipeline file; every problem is a PipelineConfigError naming a key."""
    try:
        decoded = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError as exc:
        raise PipelineConfigError(source, "", f"is not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(decoded)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineConfigError(source, "", f"is not valid TOML: {exc}") from None
    unknown = [key for key in data if key not in STAGE_NAMES]
    if unknown:
        raise PipelineConfigError(
            source, unknown[0], f"is not a stage; the stages are {_listing(STAGE_NAMES)}{_did_you_mean(unknown[0])}"
        )
    try:
        config = PipelineConfig.model_validate({**data, "source": str(source)})
    except ValidationError as exc:
        raise _first_problem(source, exc) from None
    return config


def _first_problem(source: str | Path, exc: ValidationError) -> PipelineConfigError:
    """The first of pydantic's errors, said in the file's terms: which table and key, what is wrong, how to fix."""
    error = exc.errors(include_url=False)[0]
    location = [str(part) for part in error["loc"]]
    kind, message, value = error["type"], error["msg"], error.get("input")
    table, key = _split_location(location)
    if kind == "value_error" and error.get("ctx", {}).get("error") is not None:
        # Raised by a validator of a whole table (e.g. [translate.image]): the message is the fix.
        return PipelineConfigError(source, ".".join(location), str(error["ctx"]["error"]))
    if kind == "extra_forbidden":
        known = _known_keys(location[:-1])
        hint = _did_you_mean(location[-1], known)
        return PipelineConfigError(
            source, table, f"unknown key {location[-1]!r}; the keys here are {_listing(known)}{hint}"
        )
    shown = "" if isinstance(value, dict) else f", got {value!r}"
    return PipelineConfigError(source, table, f"{key}: {message[0].lower()}{message[1:]}{shown}")


def _split_location(location: list[str]) -> tuple[str, str]:
    """(the TOML table, the key in it) of a pydantic error location such as ['detect', 'boxes', 'order']."""
    if len(location) == 1:
        return location[0], location[0]
    return ".".join(location[:-1]), location[-1]


def _known_keys(location: list[str]) -> list[str]:
    model: Any = PipelineConfig
    for part in location:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return [name for name in model.model_fields if name != "source"]


def _listing(names: Any) -> str:
    return ", ".join(names) or "none"


def _did_you_mean(word: str, choices: Any = STAGE_NAMES) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
