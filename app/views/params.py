"""Request parameters, declared once: each endpoint's model validates the query string and form fields alike,
and the OpenAPI document describes the same models (and the path parameters and headers of the routes).

A parameter may come in the query string (``?k=3``) or as a multipart form field beside
the photo (``-F k=3``); it is the same parameter either way. The same name twice with
different values is a 400, and so is a name the endpoint does not take (the message
lists the ones it does), so a typo such as ``?kk=3`` is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from flask import Request
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from app.errors import BadInput
from app.pipeline import EVERY_FACE, MAX_K, FaceChoice, Pins, pins_from
from app.pipeline_config import STAGE_NAMES
from app.serving.base import LABEL_PATTERN, LABEL_RULE, MAX_VERSION_DIGITS

__all__ = [
    "BinaryDataHeaders",
    "DetectParams",
    "GalleryParams",
    "GalleryPath",
    "InferencePath",
    "NoParams",
    "PageParams",
    "Params",
    "SearchParams",
    "TfsModelPath",
    "TranslateParams",
    "openapi_form_fields",
    "openapi_parameters",
    "read_params",
]

MAX_VERSION = 10**MAX_VERSION_DIGITS - 1
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _digits(value: Any) -> Any:
    """Only ASCII digits make a number here: int() would also take "²", "+3", " 3" and "1_000"."""
    if isinstance(value, str):
        text = value.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > MAX_VERSION_DIGITS:
            raise ValueError("not a whole number")
        return int(text)
    return value


def _flag(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("not a flag")
    return value


Version = Annotated[int, Field(ge=1, le=MAX_VERSION), BeforeValidator(_digits)]
Label = Annotated[str, Field(pattern=LABEL_PATTERN)]
Flag = Annotated[bool, BeforeValidator(_flag)]


class Params(BaseModel):
    """Parameters of one endpoint; every field is optional and unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def pins(self) -> Pins:
        return pins_from(self.model_dump())

    def face_choice(self) -> FaceChoice:
        """Which faces the request asks about: every one (``faces=all``), one (``face=<index>``), or None (the
        best, as when neither is given)."""
        every, one = getattr(self, "faces", None), getattr(self, "face", None)
        if every is not None and one is not None:
            raise BadInput("give faces=all or face=<index>, not both")
        return EVERY_FACE if every == EVERY_FACE else one

    def asks_for_faces(self) -> bool:
        """Whether the request chose its faces (the answer then has one result per face)."""
        return getattr(self, "faces", None) is not None or getattr(self, "face", None) is not None


P = TypeVar("P", bound=Params)


class NoParams(Params):
    """An endpoint that takes no parameters."""


class GalleryParams(Params):
    version: Version | None = Field(None, description="The gallery version (a result's `gallery_version`); "
                                                      "default the latest")  # fmt: skip


def _pin_fields(stages: Sequence[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "version": (Version | None, Field(None, description="Pin every stage's servable to this version")),
        "label": (Label | None, Field(None, description="Pin every stage's servable to this version label")),
    }
    for stage in stages:
        fields[f"{stage}_version"] = (
            Version | None,
            Field(None, description=f"Pin the {stage} stage's servable to this version (wins over `version`/`label`)"),
        )
        fields[f"{stage}_label"] = (
            Label | None,
            Field(None, description=f"Pin the {stage} stage's servable to this label (wins over `version`/`label`)"),
        )
    return fields


K = Annotated[int, Field(ge=1, le=MAX_K), BeforeValidator(_digits)]
_K_FIELD = (K | None, Field(None, description="How many gallery faces to return (default: GATEWAY_DEFAULT_K)"))
MAX_FACE_INDEX = 999
FaceIndex = Annotated[int, Field(ge=0, le=MAX_FACE_INDEX), BeforeValidator(_digits)]


def _face_fields(what: str) -> dict[str, Any]:
    """``faces=all`` and ``face=<index>``: which faces of the photo the request asks about (default: the best)."""
    return {
        "faces": (
            Literal["all"] | None,
            Field(
                None,
                description=f"`all`: {what} for every face found, one entry of `results` each, in `faces` order (a "
                "photo with more faces than GATEWAY_MAX_FACES is a 400)",
            ),
        ),
        "face": (
            FaceIndex | None,
            Field(
                None,
                description=f"{what.capitalize()} for this face only: its position in `faces` (best first, from 0, "
                "as /api/v1/detect lists them); the answer has one entry in `results`",
            ),
        ),
    }


SearchParams = create_model(
    "SearchParams",
    __base__=Params,
    k=_K_FIELD,
    images=(
        Flag,
        Field(False, description="true (or 1) to include the face crop as base64 JPEG (`crop_jpeg_base64`)"),
    ),
    **_face_fields("the matches"),
    **_pin_fields(("detect", "encode", "search")),
)
TranslateParams = create_model(
    "TranslateParams",
    __base__=Params,
    format=(
        Literal["png", "json"] | None,
        Field(
            None,
            description="The representation of the result; wins over the Accept header (`faces=all` answers JSON: "
            "one PNG cannot hold several faces)",
        ),
    ),
    **_face_fields("the anime image"),
    **_pin_fields(("detect", "translate")),
)
DetectParams = create_model("DetectParams", __base__=Params, **_pin_fields(("detect",)))
PageParams = create_model(
    "PageParams", __base__=Params, k=_K_FIELD, **_face_fields("the matches and anime image"), **_pin_fields(STAGE_NAMES)
)


class SeldonParams(Params):
    """What Seldon's TF Serving proxy takes as its parameters, per request here."""

    signature_name: str | None = Field(None, min_length=1, description="The signature to run (default serving_default)")
    model_input: str | None = Field(
        None, min_length=1, description="The input the tensor goes to (default: the only one)"
    )
    model_output: str | None = Field(None, min_length=1, description="The output sent back (default: the only one)")


# -- path parameters and headers, as the document describes them (the views read them themselves) ---------------


class GalleryPath(BaseModel):
    name: str = Field(min_length=1, description="The face's name in the gallery index, e.g. `lfw/face_000.png`")


ModelName = Annotated[str, Field(min_length=1, pattern=r"^[^/:]+$", description="A servable of serving_models.config")]


class InferencePath(BaseModel):
    """The Open Inference Protocol's: a version is a number or a label."""

    model_name: ModelName
    model_version: str = Field(min_length=1, description="A version number, or a version label")


class SeldonPath(BaseModel):
    """Seldon's ingress path: the namespace (not looked at) and the servable."""

    namespace: str = Field(min_length=1, description="The Seldon namespace (any: the gateway serves one set)")
    model_name: ModelName


class TfsModelPath(BaseModel):
    """TF Serving's REST API's."""

    model_name: ModelName
    version: int = Field(ge=0, description="A version number", json_schema_extra={"format": "int64"})
    label: str = Field(pattern=LABEL_PATTERN, description="A version label")


class BinaryDataHeaders(BaseModel):
    """The binary tensor data extension's request header."""

    inference_header_content_length: int | None = Field(
        None,
        alias="Inference-Header-Content-Length",
        ge=1,
        description="The length in bytes of the JSON that starts a body with binary tensor data",
    )


# -- reading ---------------------------------------------------------------------------------------


def read_params(model: type[P], request: Request, *, form: bool = True, ignore: Sequence[str] = ()) -> P:
    """The endpoint's parameters from the query string and, with ``form``, the multipart form fields.

    ``ignore`` names fields that are not parameters (the photo's own field).
    """
    values: dict[str, str] = {}
    sources = [request.args]
    if form and request.mimetype == "multipart/form-data":
        sources.append(request.form)
    for source in sources:
        for name in source:
            if name in ignore:
                continue
            if not isinstance(name, str):  # Werkzeug's key for a part whose name it could not read
                raise BadInput("a form field has no readable name: send field names as UTF-8")
            for value in source.getlist(name):
                if name in values and values[name] != value:
                    raise BadInput(
                        f"{_clip(name)} is given twice with different values ({_clip(values[name])!r} and "
                        f"{_clip(value)!r}); give it once"
                    )
                values[name] = value
    known = list(model.model_fields)
    unknown = [name for name in values if name not in model.model_fields]
    if unknown:
        takes = ", ".join(known) if known else "no parameters"
        raise BadInput(f"unknown parameter {_clip(unknown[0])!r}; this endpoint takes: {takes}")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else "?"
        raise BadInput(f"{_rule(model, name)}, got {_clip(str(values.get(name, '')))!r}") from None


def _rule(model: type[Params], name: str) -> str:
    """What a valid value of parameter ``name`` is, in words, from its declaration."""
    schema = _schema(model, name)
    kind = schema.get("type")
    if kind == "integer":
        return f"{name} must be a whole number from {schema.get('minimum', 0)} to {schema.get('maximum', MAX_VERSION)}"
    if kind == "boolean":
        return f"{name} must be 1 or 0 (true or false)"
    if "enum" in schema:
        return f"{name} must be one of {', '.join(schema['enum'])}"
    if "pattern" in schema:
        return f"{name} must be {LABEL_RULE}"
    return f"{name} is not valid"


def _clip(text: object, limit: int = 40) -> str:
    """Client-given text in a message: at most ``limit`` characters."""
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the document ----------------------------------------------------------------------------------


def _schema(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A parameter's JSON schema (``name`` as sent: a header's alias) without pydantic's ``null`` branch (OpenAPI 3.0
    has no null type)."""
    schema = dict(model.model_json_schema(by_alias=True)["properties"][name])
    choices = [branch for branch in schema.pop("anyOf", []) if branch.get("type") != "null"]
    if choices:
        schema.update(choices[0])
    schema.pop("title", None)
    if "const" in schema:  # a single choice (``Literal["all"]``): OpenAPI 3.0 has no const
        schema["enum"] = [schema.pop("const")]
    if schema.get("default") is None:
        schema.pop("default", None)
    schema.pop("description", None)
    return schema


def openapi_parameters(
    model: type[BaseModel],
    *,
    where: Literal["query", "path", "header"] = "query",
    defaults: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The model's fields as OpenAPI parameters in ``where`` (query parameters are accepted as form fields too)."""
    parameters = []
    for name, field in model.model_fields.items():
        sent = field.alias or name
        schema = _schema(model, sent)
        if defaults and sent in defaults:
            schema["default"] = defaults[sent]
        parameters.append(
            {
                "name": sent,
                "in": where,
                "required": where == "path" or field.is_required(),
                "description": field.description or "",
                "schema": schema,
            }
        )
    return parameters


def openapi_form_fields(model: type[Params]) -> dict[str, Any]:
    """The model's fields as multipart form properties, for the photo's request body."""
    return {name: {**_schema(model, name), "description": field.description or ""}
            for name, field in model.model_fields.items()}  # fmt: skip
