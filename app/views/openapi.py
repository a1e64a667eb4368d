"""The OpenAPI 3.0 document of the JSON API and the operations endpoints, built as a plain dict.

Kept beside the views it describes; ``tests/test_openapi.py`` validates it and fuzzes the
app against it, so an endpoint that changes without its description here fails a test.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.images import ACCEPTED_FORMATS
from app.security import API_KEY_HEADER, REALM
from app.views.params import (
    DetectParams,
    GalleryParams,
    Params,
    SearchParams,
    TranslateParams,
    openapi_form_fields,
    openapi_parameters,
)

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"
IMAGE_TYPES = tuple(ACCEPTED_FORMATS.values())


def document(settings: Settings) -> dict[str, Any]:
    """The whole document; limits, defaults and whether a key is needed come from the running app's settings."""
    keyed = bool(settings.all_api_keys())
    doc = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "portrait gateway",
            "version": API_VERSION,
            "description": (
                "Finds the face in a photo, searches a gallery for the nearest faces and translates the face "
                "into an anime-style image, over models served by TensorFlow Serving. Every error is "
                '`{"error": {"code", "message"}}`. Photos: JPEG, PNG, WebP or BMP, at most '
                f"{settings.max_upload_bytes:,} bytes and {settings.max_pixels:,} pixels."
            ),
        },
        "tags": [
            {"name": "portrait", "description": "Runs of the face pipeline"},
            {"name": "models", "description": "The servables behind the pipeline and the gallery"},
            {"name": "operations", "description": "Health and readiness"},
        ],
        "paths": _paths(settings, keyed=keyed, limited=bool(settings.rate_limit)),
        "components": {
            "securitySchemes": _security_schemes(),
            "schemas": _schemas(),
            "responses": _error_responses(),
            "headers": {
                "ServerTiming": {
                    "description": "Milliseconds per pipeline stage, e.g. `decode;dur=3.1, detect;dur=20.4`",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {
                    "description": "Seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 1},
                },
                **_rate_limit_headers(),
                "WWWAuthenticate": {
                    "description": f'The scheme to authenticate with: `Bearer realm="{REALM}"`',
                    "schema": {"type": "string"},
                },
            },
        },
    }
    if keyed:  # every operation but those that say `security: []`
        doc["security"] = [{"bearerKey": []}, {"apiKeyHeader": []}]
    return doc


# -- paths -----------------------------------------------------------------------------------------


def _paths(settings: Settings, *, keyed: bool, limited: bool) -> dict[str, Any]:
    timing = {"Server-Timing": _ref("headers", "ServerTiming")}
    # What a key and the rate limit add: 401 on the API's guarded operations, 429 on the photo ones.
    guarded = _errors(401) if keyed else {}
    photo = guarded | (_errors(429) if limited else {})
    k = {"k": settings.default_k}
    return {
        "/api/v1/search": {
            "post": {
                "tags": ["portrait"],
                "operationId": "search",
                "summary": "Gallery faces nearest to the face in a photo",
                "description": (
                    "Detects the best face, encodes it and returns the k nearest gallery faces, nearest first, "
                    "each with the URL of its thumbnail."
                ),
                "parameters": openapi_parameters(SearchParams, defaults=k),
                "requestBody": _photo_body(SearchParams),
                "responses": {
                    "200": _json_response("The face and its matches", "SearchResult", headers=timing),
                    **_errors(400, 404, 408, 413, 415, 422, 502, 503, 504),
                    **photo,
                },
            }
        },
        "/api/v1/translate": {
            "post": {
                "tags": ["portrait"],
                "operationId": "translate",
                "summary": "The face in a photo as an anime-style image",
                "description": (
                    "A PNG by default; JSON with the PNG in base64 and the face box with `?format=json` or "
                    "`Accept: application/json`."
                ),
                "parameters": openapi_parameters(TranslateParams),
                "requestBody": _photo_body(TranslateParams),
                "responses": {
                    "200": {
                        "description": "The translated face",
                        "headers": timing,
                        "content": {
                            "image/png": {"schema": _binary()},
                            "application/json": {"schema": _ref("schemas", "TranslateResult")},
                        },
                    },
                    **_errors(400, 404, 408, 413, 415, 422, 502, 503, 504),
                    **photo,
                },
            }
        },
        "/api/v1/detect": {
            "post": {
                "tags": ["portrait"],
                "operationId": "detect",
                "summary": "Every face in a photo",
                "description": "Faces above the detector threshold, best first; none is an empty list, not an error.",
                "parameters": openapi_parameters(DetectParams),
                "requestBody": _photo_body(DetectParams),
                "responses": {
                    "200": _json_response("The faces found", "DetectResult", headers=timing),
                    **_errors(400, 404, 408, 413, 415, 502, 503, 504),
                    **photo,
                },
            }
        },
        "/api/v1/models": {
            "get": {
                "tags": ["models"],
                "operationId": "listModels",
                "summary": "The pipeline's servables, their versions, states and version labels",
                "description": "A servable the server does not know or cannot answer for carries its error.",
                "responses": {
                    "200": _json_response("One entry per servable", "ModelsResult"),
                    **_errors(400, 503),
                    **guarded,
                },
            }
        },
        "/api/v1/gallery/{name}.jpg": {
            "get": {
                "tags": ["models"],
                "operationId": "galleryThumbnail",
                "summary": "The thumbnail of a gallery face",
                "description": "`name` is a match's `filename`, as the gallery index lists it.",
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "The face's name in the gallery index, e.g. `lfw/face_000.png`",
                        "schema": {"type": "string", "minLength": 1},
                    },
                    *openapi_parameters(GalleryParams),
                ],
                "responses": {
                    "200": {
                        "description": "A JPEG thumbnail",
                        "headers": {"Cache-Control": {"schema": {"type": "string"}}},
                        "content": {"image/jpeg": {"schema": _binary()}},
                    },
                    **_errors(400, 404),
                },
                "security": [],  # the browser page shows thumbnails without a key
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "tags": ["operations"],
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/json": {}}}},
            }
        },
        "/healthz": {
            "get": {
                "tags": ["operations"],
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "security": [],
                "responses": {"200": _json_response("Alive", "Health")},
            }
        },
        "/readyz": {
            "get": {
                "tags": ["operations"],
                "operationId": "readyz",
                "summary": "Readiness: every pipeline servable has an AVAILABLE version",
                "security": [],
                "responses": {
                    "200": _json_response("Ready", "Readiness"),
                    "503": _json_response(
                        "Not ready; names the servables that are not",
                        "Readiness",
                        headers={"Retry-After": _ref("headers", "RetryAfter")},
                    ),
                },
            }
        },
    }


def _photo_body(params: type[Params]) -> dict[str, Any]:
    """The photo, as a multipart field (with the endpoint's parameters as form fields if wanted) or as the body."""
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "image_file": {**_binary(), "description": "The photo: exactly one file"},
                    **openapi_form_fields(params),
                },
                "required": ["image_file"],
            },
            "encoding": {"image_file": {"contentType": ", ".join(IMAGE_TYPES)}},
        },
    }
    for media_type in IMAGE_TYPES:
        content[media_type] = {"schema": _binary()}
    return {
        "required": True,
        "description": (
            "A photo: a multipart field `image_file` (the parameters may come as form fields beside it), "
            "or the image itself as the body"
        ),
        "content": content,
    }


_ERRORS = {
    400: ("BadInput", "The request is malformed: a bad parameter, a missing or empty photo, a corrupt image"),
    401: ("Unauthorized", "No API key, or one that is not valid"),
    404: ("NotFound", "An unknown servable version or label (or gallery face)"),
    408: ("RequestTimeout", "The photo did not arrive within the upload deadline (GATEWAY_UPLOAD_TIMEOUT)"),
    413: ("PayloadTooLarge", "The body or the image's pixel count is over the limit"),
    415: ("UnsupportedMediaType", "Not a JPEG, PNG, WebP or BMP image"),
    422: ("NoFace", "No face was found in the photo"),
    429: ("RateLimited", "This client sent more photos than its rate limit allows; wait Retry-After seconds"),
    502: ("ModelFailure", "A model failed"),
    503: ("ServingUnavailable", "The model server cannot be reached or is overloaded"),
    504: ("DeadlineExceeded", "A model call ran past its deadline"),
}


def _error_responses() -> dict[str, Any]:
    responses = {}
    headers: dict[int, dict[str, Any]] = {
        401: {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")},
        429: {"Retry-After": _ref("headers", "RetryAfter")}
        | {name: _ref("headers", name.replace("-", "")) for name in _rate_limit_headers_names()},
        503: {"Retry-After": _ref("headers", "RetryAfter")},
    }
    for status, (name, description) in _ERRORS.items():
        responses[name] = _json_response(description, "Error", headers=headers.get(status))
    return responses


def _rate_limit_headers_names() -> tuple[str, ...]:
    return ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _rate_limit_headers() -> dict[str, Any]:
    descriptions = (
        "Requests this client may make to the photo endpoints in the current window",
        "Requests left in the current window",
        "When the current window ends, in seconds since the epoch",
    )
    return {
        name.replace("-", ""): {"description": description, "schema": {"type": "integer", "minimum": 0}}
        for name, description in zip(_rate_limit_headers_names(), descriptions, strict=True)
    }


def _security_schemes() -> dict[str, Any]:
    """How to present an API key, when the gateway is configured with keys (the document's ``security`` says so)."""
    return {
        "bearerKey": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
        "apiKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER, "description": "The key itself"},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(status): _ref("responses", _ERRORS[status][0]) for status in statuses}


def _schemas() -> dict[str, Any]:
    number = {"type": "number"}
    timings = {
        "type": "object",
        "description": "Milliseconds per pipeline stage",
        "additionalProperties": number,
    }
    return {
        "Error": _object(
            error=_object(
                code={"type": "string", "example": "no_face"},
                message={"type": "string"},
            )
        ),
        "Box": _object(
            ymin=number,
            xmin=number,
            ymax=number,
            xmax=number,
            description="Normalised to the photo: 0..1 from the top-left corner",
        ),
        "Face": _object(box=_ref("schemas", "Box"), score={"type": "number", "minimum": 0, "maximum": 1}),
        "ImageSize": _object(width={"type": "integer"}, height={"type": "integer"}),
        "Match": _object(
            index={"type": "integer", "description": "Position in the gallery"},
            filename={"type": "string", "description": "The gallery face's name in the index"},
            distance={"type": "number", "description": "Squared L2 distance between latents"},
            thumbnail_url={"type": "string", "description": "URL of the thumbnail JPEG"},
        ),
        "Timings": timings,
        "PortraitResult": _object(
            face=_ref("schemas", "Face"),
            faces={"type": "array", "items": _ref("schemas", "Face")},
            image=_ref("schemas", "ImageSize"),
            timings_ms=_ref("schemas", "Timings"),
            optional={"crop_jpeg_base64": {"type": "string", "format": "byte"}},
        ),
        "SearchResult": {
            "allOf": [
                _ref("schemas", "PortraitResult"),
                _object(
                    matches={"type": "array", "items": _ref("schemas", "Match")},
                    gallery_version={"type": "integer"},
                ),
            ]
        },
        "TranslateResult": {
            "allOf": [
                _ref("schemas", "PortraitResult"),
                _object(anime_png_base64={"type": "string", "format": "byte"}),
            ]
        },
        "DetectResult": _object(
            faces={"type": "array", "items": _ref("schemas", "Face")},
            image=_ref("schemas", "ImageSize"),
            timings_ms=_ref("schemas", "Timings"),
        ),
        "VersionStatus": _object(
            version={"type": "integer"},
            state={"type": "string", "enum": ["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
            labels={"type": "array", "items": {"type": "string"}},
            optional={"error": _ref("schemas", "ErrorDetail")},
        ),
        "ErrorDetail": _object(code={"type": "string"}, message={"type": "string"}),
        "Servable": _object(
            name={"type": "string"},
            labels={"type": "object", "additionalProperties": {"type": "integer"}},
            optional={
                "versions": {"type": "array", "items": _ref("schemas", "VersionStatus")},
                "error": _ref("schemas", "ErrorDetail"),
            },
        ),
        "ModelsResult": _object(servables={"type": "array", "items": _ref("schemas", "Servable")}),
        "Health": _object(status={"type": "string", "enum": ["ok"]}),
        "Readiness": _object(
            status={"type": "string", "enum": ["ready", "unavailable"]},
            optional={
                "servables": {
                    "type": "object",
                    "additionalProperties": _object(
                        available={"type": "boolean"},
                        optional={
                            "versions": {"type": "array", "items": {"type": "integer"}},
                            "error": {"type": "string"},
                        },
                    ),
                },
                "error": {"type": "string"},
            },
        ),
    }


# -- small builders --------------------------------------------------------------------------------


def _ref(section: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{section}/{name}"}


def _object(description: str | None = None, optional: dict[str, Any] | None = None, **required: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }
    if description:
        schema["description"] = description
    return schema


def _binary() -> dict[str, str]:
    return {"type": "string", "format": "binary"}


def _json_response(description: str, schema: str, *, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", schema)}},
    }
    if headers:
        response["headers"] = headers
    return response
