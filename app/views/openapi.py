"""The OpenAPI 3.0 document of the JSON API and the operations endpoints, built as a plain dict.

Kept beside the views it describes; ``tests/contract/test_openapi.py`` validates it and fuzzes the
app against it, so an endpoint that changes without its description here fails a test.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.images import ACCEPTED_FORMATS
from app.views.params import (
    DetectParams,
    GalleryParams,
    Params,
    SearchParams,
    TranslateParams,
    openapi_form_fields,
    openapi_parameters,
)
from app.web.security import API_KEY_HEADER, REALM

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
                f"{settings.max_upload_bytes:,} bytes and {settings.max_pixels:,} pixels. Every servable can "
                "also be called directly, through TensorFlow Serving's REST API (`/v1/models/...`) and the Open "
                'Inference Protocol (`/v2/...`), whose errors are `{"error": "<message>"}`.'
            ),
        },
        "tags": [
            {"name": "portrait", "description": "Runs of the face pipeline"},
            {"name": "models", "description": "The servables behind the pipeline and the gallery"},
            {"name": "operations", "description": "Health and readiness"},
            *_model_surface_tags(),
        ],
        "paths": {
            **_paths(settings, keyed=keyed, limited=bool(settings.rate_limit)),
            **_tfserving_paths(keyed=keyed, limited=bool(settings.rate_limit)),
            **_v2_paths(keyed=keyed, limited=bool(settings.rate_limit)),
        },
        "components": {
            "securitySchemes": _security_schemes(),
            "schemas": {**_schemas(), **_model_surface_schemas()},
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
        "Face": _object(
            box=_ref("schemas", "Box"),
            score={"type": "number", "minimum": 0, "maximum": 1},
            optional={
                "keypoints": {
                    "type": "array",
                    "description": "Landmarks in the detector's own order, normalised like the box",
                    "items": _object(y=number, x=number),
                }
            },
        ),
        "Arms": {
            "type": "object",
            "description": "The rollout arm (version label or number) that served each stage, when a split is on",
            "additionalProperties": {"type": "string"},
        },
        "ImageSize": _object(width={"type": "integer"}, height={"type": "integer"}),
        "Match": _object(
            index={"type": "integer", "description": "Position in the gallery"},
            filename={"type": "string", "description": "The gallery face's name in the index"},
            distance={"type": "number", "description": "The search servable's distance (the demo's: squared L2)"},
            thumbnail_url={"type": "string", "description": "URL of the thumbnail JPEG"},
        ),
        "Timings": timings,
        "PortraitResult": _object(
            face=_ref("schemas", "Face"),
            faces={"type": "array", "items": _ref("schemas", "Face")},
            image=_ref("schemas", "ImageSize"),
            timings_ms=_ref("schemas", "Timings"),
            optional={"crop_jpeg_base64": {"type": "string", "format": "byte"}, "arms": _ref("schemas", "Arms")},
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
            optional={"arms": _ref("schemas", "Arms")},
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


# -- the model surfaces: TF Serving's REST API (/v1) and the Open Inference Protocol (/v2) -----------------------

# What either surface may answer besides 200; TF Serving's REST API maps gRPC codes onto more of them.
_SURFACE_ERRORS = {
    400: "The request is malformed, or the model refused its inputs",
    401: "No API key, or one that is not valid",
    404: "An unknown model, version, label or signature",
    405: "Another method is answered at this path",
    408: "The body did not arrive within the upload deadline (GATEWAY_UPLOAD_TIMEOUT)",
    413: "The body is over the size limit (GATEWAY_MAX_UPLOAD_BYTES)",
    429: "This client sent more requests than its rate limit allows (or the model server is overloaded)",
    500: "The model failed (TF Serving: INTERNAL, UNKNOWN or DATA_LOSS)",
    501: "Not implemented (TF Serving: UNIMPLEMENTED, e.g. a JSON value for a dtype JSON has no mapping for)",
    502: "The model failed",
    503: "The model server cannot be reached, or the gateway's backend did not start",
    504: "The model call ran past its deadline",
}


def _model_surface_tags() -> list[dict[str, str]]:
    return [
        {
            "name": "tfserving",
            "description": (
                "TensorFlow Serving's REST API (api_rest.md), for every servable of serving_models.config, as "
                "tensorflow_model_server 2.20 answers it: its JSON, its status codes, its messages"
            ),
        },
        {"name": "inference-v2", "description": "The Open Inference Protocol (KServe v2), for every servable"},
    ]


def _surface_errors(*statuses: int) -> dict[str, Any]:
    return {
        str(status): _json_response(
            _SURFACE_ERRORS[status],
            "ProtocolError",
            headers={
                401: {"WWW-Authenticate": _ref("headers", "WWWAuthenticate")},
                429: {"Retry-After": _ref("headers", "RetryAfter")},
                503: {"Retry-After": _ref("headers", "RetryAfter")},
            }.get(status),
        )
        for status in statuses
    }


def _path_parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


_MODEL_NAME = _path_parameter(
    "model_name", "A servable of serving_models.config", {"type": "string", "minLength": 1, "pattern": "^[^/:]+$"}
)
_VERSION = _path_parameter("version", "A version number", {"type": "integer", "minimum": 0, "format": "int64"})
_LABEL = _path_parameter("label", "A version label", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"})


def _tfserving_paths(*, keyed: bool, limited: bool) -> dict[str, Any]:
    guarded = (401,) if keyed else ()
    reads = _surface_errors(400, 404, 500, 503, 504, *guarded)
    runs = _surface_errors(400, 404, 408, 413, 500, 501, 503, 504, *guarded, *((429,) if limited else ()))
    pins = {"": [], "/versions/{version}": [_VERSION], "/labels/{label}": [_LABEL]}
    verbs = {
        "predict": (
            "Predict",
            "PredictRequest",
            "PredictResponse",
            "Runs a signature on tensors given as rows or columns",
        ),
        "classify": ("Classify", "ExamplesRequest", "ClassifyResponse", "Classifies tf.Examples"),
        "regress": ("Regress", "ExamplesRequest", "RegressResponse", "Regresses tf.Examples"),
    }
    paths: dict[str, Any] = {}
    for pin, parameters in pins.items():
        suffix = pin.replace("/", "_").replace("{", "").replace("}", "")
        base = f"/v1/models/{{model_name}}{pin}"
        paths[base] = {
            "get": {
                "tags": ["tfserving"],
                "operationId": f"tfservingStatus{suffix}",
                "summary": "The versions and their states (GetModelStatus); a label is ignored, as TF Serving does",
                "parameters": [_MODEL_NAME, *parameters],
                "responses": {"200": _json_response("GetModelStatusResponse as JSON", "TfsModelStatus"), **reads},
            }
        }
        paths[f"{base}/metadata"] = {
            "get": {
                "tags": ["tfserving"],
                "operationId": f"tfservingMetadata{suffix}",
                "summary": "The model's signatures (GetModelMetadata)",
                "parameters": [_MODEL_NAME, *parameters],
                "responses": {"200": _json_response("GetModelMetadataResponse as JSON", "TfsModelMetadata"), **reads},
            }
        }
        for verb, (title, request, response, summary) in verbs.items():
            paths[f"{base}:{verb}"] = {
                "post": {
                    "tags": ["tfserving"],
                    "operationId": f"tfserving{title}{suffix}",
                    "summary": summary,
                    "parameters": [_MODEL_NAME, *parameters],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("schemas", request)}},
                    },
                    "responses": {"200": _json_response(f"{title} result", response), **runs},
                }
            }
    return paths


# The binary tensor data extension of the v2 infer operation (app/serving/v2_binary.py).
_V2_BINARY = (
    "Tensors come in JSON, or as bytes after it (the binary tensor data extension): the body is then the "
    "JSON request, `Inference-Header-Content-Length` bytes long, followed by the bytes of each input whose "
    "`parameters.binary_data_size` says how many, in the order of `inputs` (row-major, little-endian, no "
    "padding; a BOOL one byte; a BYTES element its length as a 4-byte little-endian unsigned integer, then its "
    "bytes). Outputs whose `parameters.binary_data` is true (or, where they do not say, when the request's "
    "`parameters.binary_data_output` is) come back so: `application/octet-stream`, the JSON, then their bytes "
    "in the order of `outputs`, each with `parameters.binary_data_size`, the JSON's length in the same header."
)
_V2_HEADER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "The length in bytes of the JSON that starts a body with binary tensor data",
    "schema": {"type": "integer", "minimum": 1},
}


def _v2_paths(*, keyed: bool, limited: bool) -> dict[str, Any]:
    guarded = (401,) if keyed else ()
    reads = _surface_errors(400, 404, 405, 500, 502, 503, 504, *guarded)
    runs = _surface_errors(400, 404, 405, 408, 413, 500, 502, 503, 504, *guarded, *((429,) if limited else ()))
    version = _path_parameter(
        "model_version", "A version number, or a version label", {"type": "string", "minLength": 1}
    )
    open_get = {"security": []}
    paths: dict[str, Any] = {
        "/v2": {
            "get": {
                "tags": ["inference-v2"],
                "operationId": "v2ServerMetadata",
                "summary": "Server metadata",
                "responses": {"200": _json_response("The server", "V2ServerMetadata"), **reads},
            }
        },
        "/v2/health/live": {
            "get": {
                "tags": ["inference-v2"],
                "operationId": "v2Live",
                "summary": "Server live",
                **open_get,
                "responses": {"200": _json_response("Alive", "V2Health")},
            }
        },
        "/v2/health/ready": {
            "get": {
                "tags": ["inference-v2"],
                "operationId": "v2Ready",
                "summary": "Server ready: every servable of serving_models.config has an AVAILABLE version",
                **open_get,
                "responses": {
                    "200": _json_response("Ready", "V2Health"),
                    "503": _json_response(
                        "Not ready", "V2Health", headers={"Retry-After": _ref("headers", "RetryAfter")}
                    ),
                },
            }
        },
    }
    for pin, parameters in {"": [], "/versions/{model_version}": [version]}.items():
        suffix = "Version" if pin else ""
        base = f"/v2/models/{{model_name}}{pin}"
        paths[base] = {
            "get": {
                "tags": ["inference-v2"],
                "operationId": f"v2ModelMetadata{suffix}",
                "summary": "Model metadata: the serving_default signature's tensors, the AVAILABLE versions",
                "parameters": [_MODEL_NAME, *parameters],
                "responses": {"200": _json_response("The model", "V2ModelMetadata"), **reads},
            }
        }
        paths[f"{base}/ready"] = {
            "get": {
                "tags": ["inference-v2"],
                "operationId": f"v2ModelReady{suffix}",
                "summary": "Model ready",
                "parameters": [_MODEL_NAME, *parameters],
                "responses": {
                    "200": _json_response("Ready", "V2ModelReady"),
                    **reads,
                    "503": _json_response("Not ready, or the model server cannot be reached", "V2ModelReadyOrError"),
                },
            }
        }
        answer = _json_response(
            "The outputs: JSON, or with binary outputs the JSON then their bytes",
            "V2InferenceResponse",
            headers={_V2_HEADER["name"]: {key: _V2_HEADER[key] for key in ("description", "schema")}},
        )
        answer["content"]["application/octet-stream"] = {"schema": _binary()}
        paths[f"{base}/infer"] = {
            "post": {
                "tags": ["inference-v2"],
                "operationId": f"v2Infer{suffix}",
                "summary": "Inference: typed tensors through Predict",
                "description": _V2_BINARY,
                "parameters": [_MODEL_NAME, *parameters, _V2_HEADER],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("schemas", "InferenceRequest")},
                        "application/octet-stream": {"schema": _binary()},
                    },
                },
                "responses": {"200": answer, **runs},
            }
        }
    return paths


def _model_surface_schemas() -> dict[str, Any]:
    from app.protocols.v2_tensors import InferenceRequest

    anything: dict[str, Any] = {}
    string, integer = {"type": "string"}, {"type": "integer"}
    v2_tensor = _object(name=string, datatype=string, shape={"type": "array", "items": integer})
    request = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = {name: _openapi_30(schema) for name, schema in request.pop("$defs", {}).items()}
    schemas["InferenceRequest"] = _openapi_30(request)
    signature = {"type": "string", "description": "The signature to run; default serving_default"}
    return {
        **schemas,
        "ProtocolError": _object(error={"type": "string", "description": "What went wrong, in the server's words"}),
        "PredictRequest": {
            "type": "object",
            "description": 'Exactly one of `instances` (rows) and `inputs` (columns); binary strings as {"b64": ...}',
            "properties": {"signature_name": signature, "instances": {"type": "array"}, "inputs": anything},
        },
        "PredictResponse": {
            "type": "object",
            "description": "`predictions` for a request in rows, `outputs` for one in columns",
            "properties": {"predictions": {"type": "array"}, "outputs": anything},
        },
        "ExamplesRequest": {
            "type": "object",
            "required": ["examples"],
            "properties": {
                "signature_name": signature,
                "context": {"type": "object", "description": "Features every example shares"},
                "examples": {"type": "array", "items": {"type": "object"}},
            },
        },
        "ClassifyResponse": _object(
            results={"type": "array", "description": "Per example, [label, score] per class", "items": anything}
        ),
        "RegressResponse": _object(results={"type": "array", "items": {"type": "number"}}),
        "TfsModelStatus": _object(
            model_version_status={
                "type": "array",
                "items": _object(
                    version=string,
                    state={"type": "string", "enum": ["UNKNOWN", "START", "LOADING", "AVAILABLE", "UNLOADING", "END"]},
                    status=_object(error_code=string, error_message=string),
                ),
            }
        ),
        "TfsModelMetadata": _object(
            model_spec=_object(name=string, signature_name=string, optional={"version": string}),
            metadata=_object(signature_def={"type": "object"}),
        ),
        "V2ServerMetadata": _object(name=string, version=string, extensions={"type": "array", "items": string}),
        "V2Health": _object(live={"type": "boolean"}, optional={"ready": {"type": "boolean"}}),
        "V2ModelReady": _object(name=string, ready={"type": "boolean"}),
        "V2ModelReadyOrError": {"oneOf": [_ref("schemas", "V2ModelReady"), _ref("schemas", "ProtocolError")]},
        "V2ModelMetadata": _object(
            name=string,
            versions={"type": "array", "items": string},
            platform=string,
            inputs={"type": "array", "items": v2_tensor},
            outputs={"type": "array", "items": v2_tensor},
        ),
        "V2InferenceResponse": _object(
            model_name=string,
            outputs={
                "type": "array",
                "items": _object(
                    name=string,
                    datatype=string,
                    shape={"type": "array", "items": integer},
                    optional={
                        "data": {"type": "array", "description": "Absent for an output sent as binary data"},
                        "parameters": {"type": "object"},
                    },
                ),
            },
            optional={"model_version": string, "id": string},
        ),
    }


def _openapi_30(schema: Any) -> Any:
    """A pydantic JSON schema (2020-12) as OpenAPI 3.0 takes it: ``anyOf [X, null]`` becomes ``X`` nullable."""
    if isinstance(schema, list):
        return [_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: _openapi_30(value) for key, value in schema.items() if key != "title"}
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        schema.pop("anyOf")
        if len(rest) == 1 and "$ref" not in rest[0]:
            schema.update(rest[0])
        else:
            schema["anyOf"] = rest
        schema["nullable"] = True
    return schema
