"""The OpenAPI 3.0 document, generated from the route declarations (``app.web.operations``) and the app's url_map.

Paths and methods come from the url_map (a catch-all route names the paths it answers), each operation from its
view's declaration, the schemas from the pydantic models the declarations name (parameters, request bodies,
answers: ``app.views.params``, ``app.views.answers``), and what depends on the settings from the running app's:
401 and the security schemes when API keys are set, 429 where the rate limit counts, the upload limits, the
default k. ``tests/contract/test_openapi.py`` validates the document and fuzzes the app against it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from werkzeug.routing import Rule

from app.config import Settings
from app.images import ACCEPTED_FORMATS
from app.views.answers import Error
from app.views.params import openapi_form_fields, openapi_parameters
from app.web.operations import Answer, JsonBody, Operation, Photo, Route, route_of
from app.web.security import API_KEY_HEADER, REALM

OPENAPI_VERSION = "3.0.3"
API_VERSION = "1.0.0"
IMAGE_TYPES = tuple(ACCEPTED_FORMATS.values())
_BINARY = {"type": "string", "format": "binary"}

TAGS = {
    "portrait": "Runs of the face pipeline",
    "models": "The servables behind the pipeline and the gallery",
    "operations": "Health and readiness",
    "tfserving": (
        "TensorFlow Serving's REST API (api_rest.md), for every servable of serving_models.config, as "
        "tensorflow_model_server 2.20 answers it: its JSON, its status codes, its messages"
    ),
    "inference-v2": "The Open Inference Protocol (KServe v2), for every servable",
    "seldon": "Seldon Core's prediction protocol, for every servable (the path of Seldon's ingress and clients)",
}

# What each error status means wherever it is answered, and the name of the gateway's own answer for it.
ERRORS = {
    400: ("BadInput", "The request is malformed (a bad parameter, body or photo), or the model refused its inputs"),
    401: ("Unauthorized", "No API key, or one that is not valid"),
    404: ("NotFound", "An unknown servable, version, label or signature (or gallery face)"),
    405: ("MethodNotAllowed", "Another method is answered at this path"),
    408: ("RequestTimeout", "The body did not arrive within the upload deadline (GATEWAY_UPLOAD_TIMEOUT)"),
    413: ("PayloadTooLarge", "The body or the image's pixel count is over the limit"),
    415: ("UnsupportedMediaType", "Not a JPEG, PNG, WebP or BMP image"),
    422: ("NoFace", "No face was found in the photo"),
    429: (
        "RateLimited",
        "This client sent more requests than its rate limit allows (on the model surfaces, also: the model server "
        "is overloaded); wait Retry-After seconds",
    ),
    500: ("ModelError", "The model failed (TF Serving: INTERNAL, UNKNOWN or DATA_LOSS)"),
    501: (
        "NotImplemented",
        "Not implemented (TF Serving: UNIMPLEMENTED, e.g. a JSON value for a dtype JSON has no mapping for)",
    ),
    502: ("ModelFailure", "A model failed"),
    503: ("ServingUnavailable", "The model server cannot be reached or is overloaded, or the backend did not start"),
    504: ("DeadlineExceeded", "A model call ran past its deadline"),
}
_ERROR_HEADERS = {
    401: ("WWW-Authenticate",),
    429: ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"),
    503: ("Retry-After",),
}
_COUNT = {"type": "integer", "minimum": 0}
HEADERS = {
    "Server-Timing": (
        "Milliseconds per pipeline stage, e.g. `decode;dur=3.1, detect;dur=20.4`",
        {"type": "string"},
    ),
    "Retry-After": ("Seconds to wait before trying again", {"type": "integer", "minimum": 1}),
    "X-RateLimit-Limit": ("Requests this client may make to the photo and model endpoints in the window", _COUNT),
    "X-RateLimit-Remaining": ("Requests left in the current window", _COUNT),
    "X-RateLimit-Reset": ("When the current window ends, in seconds since the epoch", _COUNT),
    "WWW-Authenticate": (f'The scheme to authenticate with: `Bearer realm="{REALM}"`', {"type": "string"}),
    "Cache-Control": ("How long the answer may be cached", {"type": "string"}),
    "Inference-Header-Content-Length": (
        "The length in bytes of the JSON that starts a body with binary tensor data",
        {"type": "integer", "minimum": 1},
    ),
}


def document(app: Flask) -> dict[str, Any]:
    """The whole document of ``app``: its declared routes, as its settings make them."""
    settings: Settings = app.config["GATEWAY_SETTINGS"]
    keyed = bool(settings.all_api_keys())
    builder = _Builder(settings, keyed=keyed, limited=bool(settings.rate_limit), found=list(documented(app)))
    doc: dict[str, Any] = {
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
        "tags": [{"name": name, "description": description} for name, description in TAGS.items()],
        "paths": builder.paths(),
        "components": {
            "securitySchemes": {
                "bearerKey": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <key>`"},
                "apiKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": API_KEY_HEADER,
                    "description": "The key itself",
                },
            },
            "schemas": builder.schemas,
            "responses": builder.responses,
            "headers": {
                _component_name(name): {"description": description, "schema": schema}
                for name, (description, schema) in HEADERS.items()
            },
        },
    }
    if keyed:  # every operation but those that say `security: []`
        doc["security"] = [{"bearerKey": []}, {"apiKeyHeader": []}]
    return doc


@dataclass(frozen=True)
class Documented:
    """One operation at one path and method."""

    path: str
    method: str
    route: Route
    operation: Operation
    operation_id: str


def documented(app: Flask) -> Iterator[Documented]:
    """Every declared operation of ``app`` at each path and method it is answered at, in the url_map's order.

    An operation answered at several rules (``/v2/models/<model_name>`` and ``.../versions/<model_version>``)
    keeps its id at the shortest and gets the extra path parameters' names appended at the others.
    """
    rules: dict[str, list[Rule]] = {}
    for rule in app.url_map.iter_rules():
        rules.setdefault(rule.endpoint, []).append(rule)
    seen: set[tuple[str, str]] = set()
    for endpoint, endpoint_rules in rules.items():
        route = route_of(app.view_functions.get(endpoint))
        if route is None:
            continue
        endpoint_rules.sort(key=lambda rule: (len(rule.arguments), rule.rule))
        for operation in route.operations:
            first: set[str] | None = None
            for rule in endpoint_rules:
                path = operation.path or path_template(rule)
                arguments = set(re.findall(r"{(\w+)}", path))
                first = arguments if first is None else first
                operation_id = operation.operation_id + "".join(
                    part.title() for name in sorted(arguments - first) for part in name.split("_")
                )
                for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                    if (path, method) not in seen:
                        seen.add((path, method))
                        yield Documented(path, method.lower(), route, operation, operation_id)


def path_template(rule: Rule) -> str:
    """A rule as an OpenAPI path: ``/gallery/<path:name>.jpg`` -> ``/gallery/{name}.jpg``, no trailing slash."""
    path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
    return path.rstrip("/") or "/"


class _Builder:
    """The paths and the components they refer to."""

    def __init__(self, settings: Settings, *, keyed: bool, limited: bool, found: list[Documented]) -> None:
        self.settings = settings
        self.keyed = keyed
        self.limited = limited
        self.found = found
        self.responses: dict[str, Any] = {}
        models = {Error}
        for item in found:
            operation = item.operation
            if operation.error_model is not None:
                models.add(operation.error_model)
            if isinstance(operation.body, JsonBody):
                models.add(operation.body.model)
            for answer in operation.answers.values():
                models.update(_models_of(answer))
        ordered = sorted(models, key=lambda model: model.__name__)
        refs, top = models_json_schema(
            [(model, "validation") for model in ordered], ref_template="#/components/schemas/{model}"
        )
        self.refs = {model: refs[(model, "validation")] for model in ordered}
        self.schemas = {name: openapi_30(schema) for name, schema in sorted(top.get("$defs", {}).items())}

    def paths(self) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        for item in self.found:
            paths.setdefault(item.path, {})[item.method] = self.operation(item)
        return paths

    def operation(self, item: Documented) -> dict[str, Any]:
        operation, route = item.operation, item.route
        body: dict[str, Any] = {"tags": list(operation.tags), "operationId": item.operation_id}
        body["summary"] = operation.summary
        if operation.description:
            body["description"] = operation.description
        parameters = self.parameters(item)
        if parameters:
            body["parameters"] = parameters
        if operation.body is not None:
            body["requestBody"] = self.request_body(operation)
        statuses = set(operation.errors)
        if route.needs_key and self.keyed:
            statuses.add(401)
        if route.rate_limited and self.limited:
            statuses.add(429)
        responses = {str(status): self.answer(answer) for status, answer in sorted(operation.answers.items())}
        for status in sorted(statuses):
            responses.setdefault(str(status), self.error(status, operation.error_model))
        body["responses"] = responses
        if not route.needs_key:
            body["security"] = []
        if route.runs_models:
            body["x-runs-models"] = True
        return body

    def parameters(self, item: Documented) -> list[dict[str, Any]]:
        operation = item.operation
        in_path = re.findall(r"{(\w+)}", item.path)
        parameters = []
        if in_path:
            if operation.path_params is None:
                raise ValueError(f"{item.path}: declare its path parameters ({', '.join(in_path)})")
            declared = {p["name"]: p for p in openapi_parameters(operation.path_params, where="path")}
            parameters += [declared[name] for name in in_path]  # KeyError: a path parameter not declared
        if operation.query is not None:
            parameters += openapi_parameters(operation.query, defaults={"k": self.settings.default_k})
        if operation.headers is not None:
            parameters += openapi_parameters(operation.headers, where="header")
        return parameters

    def request_body(self, operation: Operation) -> dict[str, Any]:
        if isinstance(operation.body, Photo):
            form = openapi_form_fields(operation.query) if operation.query is not None else {}
            content: dict[str, Any] = {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image_file": {**_BINARY, "description": "The photo: exactly one file"}, **form},
                        "required": ["image_file"],
                    },
                    "encoding": {"image_file": {"contentType": ", ".join(IMAGE_TYPES)}},
                }
            }
            description = "A photo: a multipart field `image_file` (the parameters may come as form fields beside it)"
            if operation.body.raw:
                content.update({media_type: {"schema": _BINARY} for media_type in IMAGE_TYPES})
                description += ", or the image itself as the body"
            return {"required": True, "description": description, "content": content}
        assert isinstance(operation.body, JsonBody)
        content = {"application/json": {"schema": self.refs[operation.body.model]}}
        if operation.body.binary:
            content["application/octet-stream"] = {"schema": _BINARY}
        return {"required": True, "content": content}

    def answer(self, answer: Answer) -> dict[str, Any]:
        content: dict[str, Any] = {}
        models = _models_of(answer)
        if models:
            refs = [self.refs[model] for model in models]
            content["application/json"] = {"schema": refs[0] if len(refs) == 1 else {"oneOf": refs}}
        for media_type in answer.media_types:
            content[media_type] = {} if media_type == "application/json" else {"schema": _BINARY}
        return _response(answer.description, content, answer.headers)

    def error(self, status: int, model: type[BaseModel] | None) -> dict[str, Any]:
        """The gateway's own errors are components, referred to; a protocol's are written in place."""
        name, description = ERRORS[status]
        content = {"application/json": {"schema": self.refs[model or Error]}}
        response = _response(description, content, _ERROR_HEADERS.get(status, ()))
        if model is not None:
            return response
        self.responses[name] = response
        return {"$ref": f"#/components/responses/{name}"}


def _models_of(answer: Answer) -> tuple[type[BaseModel], ...]:
    if answer.model is None:
        return ()
    return answer.model if isinstance(answer.model, tuple) else (answer.model,)


def _response(description: str, content: dict[str, Any], headers: tuple[str, ...]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if headers:
        response["headers"] = {name: {"$ref": f"#/components/headers/{_component_name(name)}"} for name in headers}
    if content:
        response["content"] = content
    return response


def _component_name(header: str) -> str:
    return header.replace("-", "")


# -- JSON Schema (pydantic's, 2020-12) as OpenAPI 3.0 takes it -------------------------------------------

_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")  # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not")
_NULL = {"type": "null"}


def openapi_30(schema: Any) -> Any:
    """A pydantic JSON schema as OpenAPI 3.0 takes it: no titles; an optional key (one left out when it has no
    value) is not nullable; ``anyOf [X, null]`` is X nullable; ``const`` an enum; ``examples`` one example;
    a ``$ref`` with siblings inside ``allOf``."""
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    schema.pop("title", None)
    if "properties" in schema:
        required = set(schema.get("required", ()))
        schema["properties"] = {
            name: value if name in required else _absent_when_none(value)
            for name, value in schema["properties"].items()
        }
    for key in _SCHEMA_MAPS:
        if key in schema:
            schema[key] = {name: openapi_30(value) for name, value in schema[key].items()}
    for key in _SCHEMA_LISTS:
        if key in schema:
            schema[key] = [openapi_30(value) for value in schema[key]]
    for key in _SCHEMA_VALUES:
        if isinstance(schema.get(key), dict):
            schema[key] = openapi_30(schema[key])
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    if "examples" in schema:
        schema["example"] = schema.pop("examples")[0]
    options = schema.get("anyOf")
    if options and _NULL in options:
        rest = [option for option in options if option != _NULL]
        schema.pop("anyOf")
        if len(rest) == 1 and "$ref" not in rest[0]:
            schema.update(rest[0])
            schema["nullable"] = True
        else:  # 3.0 cannot make a $ref nullable: null is one more branch
            schema["anyOf"] = [*rest, {"nullable": True, "enum": [None]}]
    if "$ref" in schema and len(schema) > 1:  # 3.0 ignores a $ref's siblings
        schema = {"allOf": [{"$ref": schema.pop("$ref")}], **schema}
    return schema


def _absent_when_none(schema: dict[str, Any]) -> dict[str, Any]:
    """A key that is left out when it has no value: no null branch, no null default."""
    schema = dict(schema)
    if schema.get("default", 0) is None:
        schema.pop("default")
        options = schema.pop("anyOf", None)
        if options is not None:
            rest = [option for option in options if option != _NULL]
            if len(rest) == 1:
                schema.update(rest[0])
            else:
                schema["anyOf"] = rest
    return schema
