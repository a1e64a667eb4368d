"""The JSON answers of the gateway, as pydantic models: the views build every JSON body through them, and the OpenAPI
document's schemas are theirs, so what is sent and what is described cannot drift apart.

A key that has no value is left out of the body, never sent as null: such a field is declared with
:func:`optional`. A field whose value may be null is required and typed ``X | None`` (``gallery_version``).
Values go through as the views give them: ``AnswerBody.body`` dumps in Python mode and Flask's JSON provider writes
the text (sorted keys, NaN as Flask writes it), as it did before these models; a float field given a whole number
sends it as a float.

- the JSON API (/api/v1) and operations: :class:`Error`, :class:`SearchResult`, :class:`TranslateResult`,
  their forms for every face or a chosen one :class:`FacesSearchResult`, :class:`FacesTranslateResult`,
  :class:`DetectResult`, :class:`ModelsResult`, :class:`Health`, :class:`Readiness`;
- the Open Inference Protocol (/v2): :class:`V2ServerMetadata`, :class:`V2Health`, :class:`V2ModelMetadata`,
  :class:`V2ModelReady`, :class:`V2InferenceResponse`, errors :class:`ProtocolError`;
- TF Serving's REST API (/v1): its codec writes TF Serving's exact JSON text itself; the models here
  (:class:`PredictRequest` ... :class:`TfsModelMetadata`) describe it for the document.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app import pipeline
from app.protocols.v2_tensors import DatatypeName, Parameters

# The error bodies, declared where the app's one error handler renders them, whatever raised the error.
from app.web.errors import Error as Error
from app.web.errors import ErrorDetail as ErrorDetail
from app.web.errors import ProtocolError as ProtocolError

Base64 = Annotated[str, Field(json_schema_extra={"format": "byte"})]
Timings = Annotated[dict[str, float], Field(description="Milliseconds per pipeline stage")]
Arms = Annotated[
    dict[str, str],
    Field(description="The rollout arm (version label or number) that served each stage, when a split is on"),
]


def _is_none(value: Any) -> bool:
    return value is None


def optional(description: str = "", **constraints: Any) -> Any:
    """A key that is in the body only when it has a value (it is never null)."""
    return Field(None, description=description or None, exclude_if=_is_none, **constraints)


class AnswerBody(BaseModel):
    """A JSON body the gateway sends: unknown keys are refused, so a view cannot send what is not declared."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        """The body, ready for ``jsonify``: keys without a value left out."""
        return self.model_dump(by_alias=True)


# -- the face pipeline -----------------------------------------------------------------------------


class Box(AnswerBody):
    """Normalised to the photo: 0..1 from the top-left corner."""

    ymin: float
    xmin: float
    ymax: float
    xmax: float


class Keypoint(AnswerBody):
    y: float
    x: float


class Face(AnswerBody):
    box: Box
    score: float = Field(description="The detector's score for the face (the demo's: 0..1)")
    keypoints: list[Keypoint] | None = optional("Landmarks in the detector's own order, normalised like the box")

    @classmethod
    def of(cls, face: pipeline.Face) -> Face:
        ymin, xmin, ymax, xmax = face.box
        keypoints = None if face.keypoints is None else [Keypoint(y=y, x=x) for y, x in face.keypoints]
        return cls(box=Box(ymin=ymin, xmin=xmin, ymax=ymax, xmax=xmax), score=face.score, keypoints=keypoints)


class ImageSize(AnswerBody):
    width: int
    height: int

    @classmethod
    def of(cls, photo: pipeline.Photo) -> ImageSize:
        width, height = photo.original_size
        return cls(width=width, height=height)


class Match(AnswerBody):
    index: int = Field(description="Position in the gallery")
    filename: str = Field(description="The gallery face's name in the index")
    distance: float = Field(description="The search servable's distance (the demo's: squared L2)")
    thumbnail_url: str = Field(description="URL of the thumbnail JPEG")


class DetectResult(AnswerBody):
    """Every face found, best first."""

    faces: list[Face]
    image: ImageSize
    timings_ms: Timings
    arms: Arms


class PortraitResult(AnswerBody):
    """One run of the pipeline on the best face of a photo."""

    face: Face
    faces: list[Face] = Field(description="Every face found, best first; `face` is the first")
    image: ImageSize
    timings_ms: Timings
    arms: Arms
    crop_jpeg_base64: Base64 | None = optional("The face crop as a JPEG, when asked for (`images=1`)")
    anime_png_base64: Base64 | None = optional("The anime-style face as a PNG")


class SearchResult(PortraitResult):
    """The face and the gallery faces nearest to it, nearest first."""

    matches: list[Match]
    gallery_version: int | None = Field(description="The gallery version that answered (null: not said)")
    missing_shards: list[str] | None = optional(
        "Shards of a sharded gallery that did not answer: the matches are those of the others (only with "
        "`partial = true` in the pipeline file)"
    )


class TranslateResult(PortraitResult):
    """The face and its anime-style translation."""

    anime_png_base64: Base64 = Field(description="The anime-style face as a PNG")


# -- every face, or one chosen (faces=all, face=<index>) ----------------------------------------------

FacePosition = Annotated[int, Field(ge=0, description="The face's position in `faces` (best first, from 0)")]


class FaceMatches(AnswerBody):
    """One face's matches, nearest first."""

    face: FacePosition
    matches: list[Match]
    crop_jpeg_base64: Base64 | None = optional("The face crop as a JPEG, when asked for (`images=1`)")
    anime_png_base64: Base64 | None = optional("The anime-style face as a PNG (the page's JSON)")


class FacesSearchResult(AnswerBody):
    """The gallery faces nearest to each face asked about (`faces=all` or `face=<index>`): one entry of `results`
    per face, in `faces` order."""

    faces: list[Face] = Field(description="Every face found, best first")
    image: ImageSize
    results: list[FaceMatches]
    gallery_version: int | None = Field(description="The gallery version that answered (null: not said)")
    missing_shards: list[str] | None = optional(
        "Shards of a sharded gallery that did not answer: the matches are those of the others (only with "
        "`partial = true` in the pipeline file)"
    )
    timings_ms: Timings
    arms: Arms


class FaceTranslation(AnswerBody):
    """One face's anime-style translation."""

    face: FacePosition
    anime_png_base64: Base64 = Field(description="The anime-style face as a PNG")


class FacesTranslateResult(AnswerBody):
    """The anime-style translation of each face asked about (`faces=all` or `face=<index>`): one entry of `results`
    per face, in `faces` order."""

    faces: list[Face] = Field(description="Every face found, best first")
    image: ImageSize
    results: list[FaceTranslation]
    timings_ms: Timings
    arms: Arms


# -- the servables ---------------------------------------------------------------------------------


class VersionStatus(AnswerBody):
    version: int
    state: str = Field(description="START, LOADING, AVAILABLE, UNLOADING or END, as TF Serving reports it")
    labels: list[str] = Field(description="The version labels that name this version")
    error: ErrorDetail | None = optional("Why the version failed, when it did")


class Servable(AnswerBody):
    name: str
    labels: dict[str, int] = Field(description="The servable's version labels and the versions they name")
    versions: list[VersionStatus] | None = optional("Its versions; absent when the server could not say")
    error: ErrorDetail | None = optional("Why the server could not say")


class Misfit(AnswerBody):
    key: str = Field(description="The pipeline file's key that does not fit")
    problem: str
    fix: str


class StageReport(AnswerBody):
    """One stage: its wiring as the pipeline file gives it (servable, signature, tensors ...), and whether the
    servable's current version fits it."""

    model_config = ConfigDict(extra="allow")  # the wiring's keys are the pipeline file's (app.pipeline_config)

    fits: bool
    misfits: list[Misfit]
    unchecked: str | None = optional("Why the servable could not be asked (not a misfit: unknown yet)")


class PipelineReport(AnswerBody):
    source: str = Field(description="Where the wiring comes from: the pipeline file, or the built-in defaults")
    stages: dict[str, StageReport]
    refused: str | None = optional("Why a newer pipeline file was refused (the last good one serves)")


class ArmReport(AnswerBody):
    name: str
    weight: int = Field(description="Percent of the traffic")
    version: int | None = optional("The version the arm pins")
    label: str | None = optional("The version label the arm pins")
    available: bool
    serves_version: int | None = optional("The version that answered the last look")
    reason: str | None = optional("Why the arm is not available")


class RolloutReport(AnswerBody):
    servable: str
    arms: list[ArmReport]
    stable: str = Field(description="The arm a failing canary falls back to")
    shadow: ArmReport | None = Field(description="The arm that gets a copy of each request (null: none)")


class ModelConfigReport(AnswerBody):
    refused: str | None = Field(description="Why the newest serving_models.config was refused (the previous serves)")


class ModelsResult(AnswerBody):
    """Each pipeline servable with its versions, the pipeline file's wiring, and each stage's rollout."""

    servables: list[Servable]
    pipeline: PipelineReport
    rollouts: dict[str, RolloutReport]
    model_config_: ModelConfigReport | None = optional(
        "What the model server made of serving_models.config, when it can tell", alias="model_config"
    )


class Health(AnswerBody):
    status: Literal["ok"]


class ServableReadiness(AnswerBody):
    available: bool
    versions: list[int] | None = optional("Its AVAILABLE versions")
    error: str | None = optional("Why the server could not say")


class Readiness(AnswerBody):
    status: Literal["ready", "unavailable"]
    servables: dict[str, ServableReadiness] | None = optional("Each pipeline servable")
    model_config_: ModelConfigReport | None = optional(
        "Why the newest serving_models.config was refused, when it was", alias="model_config"
    )
    misfits: list[str] | None = optional("What of the servables does not fit the pipeline file")
    error: str | None = optional("Why the backend could not start")


# -- the Open Inference Protocol (/v2) -------------------------------------------------------------


class V2ServerMetadata(AnswerBody):
    name: str
    version: str
    extensions: list[str]


class V2Health(AnswerBody):
    live: bool
    ready: bool | None = optional()
    not_ready: list[str] | None = optional("The servables with no AVAILABLE version")


class V2TensorMetadata(AnswerBody):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for an unknown dimension; `[-1]` for an unknown rank")


class V2ModelMetadata(AnswerBody):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ModelReady(AnswerBody):
    name: str
    ready: bool


class V2OutputTensor(AnswerBody):
    name: str
    datatype: DatatypeName
    shape: list[int]
    parameters: Parameters | None = optional('`{"binary_data_size": <bytes>}` or `{"content_type": "base64"}`')
    data: list[Any] | None = optional("The values, flat, in row-major order; absent for an output sent as binary data")


class V2InferenceResponse(AnswerBody):
    model_name: str
    model_version: str | None = optional()
    id: str | None = optional("The request's id")
    outputs: list[V2OutputTensor]


# -- TF Serving's REST API (/v1): the codec writes the text; these describe it ------------------------

_SIGNATURE = "The signature to run; default serving_default"


class PredictRequest(BaseModel):
    """Exactly one of `instances` (rows) and `inputs` (columns); binary strings as {"b64": ...}."""

    signature_name: str | None = optional(_SIGNATURE)
    instances: list[Any] | None = optional()
    inputs: Any = optional()


class PredictResponse(BaseModel):
    """`predictions` for a request in rows, `outputs` for one in columns."""

    predictions: list[Any] | None = optional()
    outputs: Any = optional()


class ExamplesRequest(BaseModel):
    signature_name: str | None = optional(_SIGNATURE)
    context: dict[str, Any] | None = optional("Features every example shares")
    examples: list[dict[str, Any]]


class ClassifyResponse(BaseModel):
    results: list[Any] = Field(description="Per example, [label, score] per class")


class RegressResponse(BaseModel):
    results: list[float]


class TfsErrorStatus(BaseModel):
    error_code: str
    error_message: str


class TfsVersionStatus(BaseModel):
    version: str
    state: Literal["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
    status: TfsErrorStatus


class TfsModelStatus(BaseModel):
    model_version_status: list[TfsVersionStatus]


class TfsModelSpec(BaseModel):
    name: str
    signature_name: str
    version: str | None = optional()


class TfsSignatures(BaseModel):
    signature_def: dict[str, Any]


class TfsModelMetadata(BaseModel):
    model_spec: TfsModelSpec
    metadata: TfsSignatures


# -- Seldon's protocol (/seldon/<namespace>/<servable>/api/v1.0/predictions) ----------------------------------


class SeldonStatus(BaseModel):
    """Seldon's status of a failed prediction."""

    model_config = ConfigDict(extra="forbid")

    code: int = Field(description="The HTTP status")
    info: str = Field(description="What went wrong")
    reason: str = Field(description="MICROSERVICE_BAD_DATA (the request) or MICROSERVICE_INTERNAL_ERROR")
    status: Literal["FAILURE"]


class SeldonError(AnswerBody):
    """Every error of the Seldon surface, whoever raised it (key check, rate limit, size limit, the model)."""

    status: SeldonStatus


class SeldonAnswerData(BaseModel):
    """``data``: the output in the request's kind, the request's names echoed."""

    model_config = ConfigDict(extra="forbid")

    names: list[str]
    ndarray: list[Any] | None = optional("The output as nested lists (a request in ndarray)")
    tensor: dict[str, Any] | None = optional("The output as {shape, values} (a request in tensor)")
    tftensor: dict[str, Any] | None = optional("The output as a TensorProto in JSON (a request in tftensor)")


class SeldonAnswer(AnswerBody):
    """A SeldonMessage: ``data`` (or ``jsonData``, TF Serving's REST answer, for a ``jsonData`` request), ``meta``."""

    data: SeldonAnswerData | None = optional()
    json_data: Any = optional("TF Serving's REST answer to a jsonData request", alias="jsonData")
    meta: dict[str, Any] = Field(description="puid and tags echoed (a puid made when none came); requestPath")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
