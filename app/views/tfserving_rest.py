"""TF Serving's REST API (port 8501's ``/v1/models/...``) at the gateway, for every servable, on either backend.

As tensorflow_model_server 2.20.0 answers it (http_rest_api_handler.cc, http_rest_api_util.cc,
http_server.cc): every path under ``/v1/`` is read with TF Serving's own patterns (case-insensitive,
percent-decoded names and labels), anything else under ``/v1/`` is "Malformed request: <METHOD> <path>",
the status code is ``ToHTTPStatusCode`` of the gRPC code (INVALID_ARGUMENT and FAILED_PRECONDITION 400,
NOT_FOUND 404, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL 500 ...) and the body of an error is
``{"error": "<TF Serving's message>"}``.

- ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]``: GetModelStatus as JSON (a label is ignored,
  as TF Serving 2.20 ignores it: every version is listed).
- ``GET .../metadata``: GetModelMetadata as JSON, every SignatureDef.
- ``POST ...:predict``: row (``instances``) or columnar (``inputs``) JSON, typed by the signature.
- ``POST ...:classify`` and ``...:regress``: ``examples`` (and ``context``) as tf.Examples.

The embedded backend runs them in its runtime; the gRPC backend sends TF Serving GetModelStatus,
GetModelMetadata, Predict, Classify and Regress (a predict request is typed by the backend's cached
metadata: no GetModelMetadata per request). The codec is ``app.protocols``' tfserving_reader (the body),
tfserving_requests (its tensors or examples) and tfserving_answers (the JSON out).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import grpc
from flask import Blueprint, Response, request
from google.protobuf import json_format

from app.errors import GatewayError, ServingStatus
from app.protocols.json_text import html_safe
from app.protocols.tfserving_answers import classification_json, predict_response, regression_json
from app.protocols.tfserving_reader import parse
from app.protocols.tfserving_requests import examples_input, predict_request
from app.serving.base import DEFAULT_SIGNATURE, Backend, ModelRef, VersionStatus, is_label
from app.serving.protos.tensorflow_serving.apis import get_model_status_pb2, status_pb2
from app.views import answers
from app.views.model_apis import (
    ProtocolError,
    SignatureNotFound,
    name_request,
    protocol_surface,
    read_body,
    signature_defs,
    signature_tensors,
)
from app.views.params import TfsModelPath
from app.web.extensions import serving
from app.web.operations import Answer, JsonBody, Operation, declare

bp = Blueprint("tfserving_rest", __name__)
protocol_surface(bp)

# http_rest_api_util.cc, verbatim but for the byte strings: RE2's \d is ASCII, as bytes patterns' is.
PREDICTION_PATH = re.compile(
    rb"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE
)
STATUS_PATH = re.compile(
    rb"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?", re.IGNORECASE
)
_INT64_MAX = 2**63 - 1

# ToHTTPStatusCode (http_server.cc).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODE = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


# -- the routes: every path under /v1/ comes here, as it goes to TF Serving's handler ----------------------------

_TAGS = ("tfserving",)
# What the surface answers besides 200 (ToHTTPStatusCode of the gRPC codes): reading a model, and running one.
_READS = (400, 404, 500, 503, 504)
_RUNS = (400, 404, 408, 413, 500, 501, 503, 504)
_PINS = (("", ""), ("/versions/{version}", "Version"), ("/labels/{label}", "Label"))
_VERBS = (
    (
        "predict",
        answers.PredictRequest,
        answers.PredictResponse,
        "Runs a signature on tensors given as rows or columns",
    ),
    ("classify", answers.ExamplesRequest, answers.ClassifyResponse, "Classifies tf.Examples"),
    ("regress", answers.ExamplesRequest, answers.RegressResponse, "Regresses tf.Examples"),
)


def _surface_operation(operation_id: str, path: str, summary: str, **details: object) -> Operation:
    return Operation(
        operation_id, summary, tags=_TAGS, path=path, path_params=TfsModelPath, error_model=answers.ProtocolError,
        **details,  # type: ignore[arg-type]
    )  # fmt: skip


def _reads() -> tuple[Operation, ...]:
    """The paths GET answers: a model's status and its metadata, by name, version or label."""
    operations = []
    for pin, suffix in _PINS:
        base = f"/v1/models/{{model_name}}{pin}"
        operations += [
            _surface_operation(
                f"tfservingStatus{suffix}",
                base,
                "The versions and their states (GetModelStatus); a label is ignored, as TF Serving does",
                answers={200: Answer("GetModelStatusResponse as JSON", answers.TfsModelStatus)},
                errors=_READS,
            ),
            _surface_operation(
                f"tfservingMetadata{suffix}",
                f"{base}/metadata",
                "The model's signatures (GetModelMetadata)",
                answers={200: Answer("GetModelMetadataResponse as JSON", answers.TfsModelMetadata)},
                errors=_READS,
            ),
        ]
    return tuple(operations)


def _runs() -> tuple[Operation, ...]:
    """The paths POST answers: predict, classify and regress, by name, version or label."""
    return tuple(
        _surface_operation(
            f"tfserving{verb.title()}{suffix}",
            f"/v1/models/{{model_name}}{pin}:{verb}",
            summary,
            body=JsonBody(request_model),
            answers={200: Answer(f"{verb.title()} result", response_model)},
            errors=_RUNS,
        )
        for pin, suffix in _PINS
        for verb, request_model, response_model, summary in _VERBS
    )


@declare(*_reads(), needs_key=True)
def read(path: str = "") -> Response:
    """GET: a model's status or metadata (TF Serving's patterns read the path; anything else is malformed)."""
    return _handle()


@declare(*_runs(), needs_key=True, rate_limited=True, runs_models=True)
def run(path: str = "") -> Response:
    """POST: predict, classify or regress."""
    return _handle()


@declare(needs_key=True)  # a CORS preflight, or "Malformed request"
def other(path: str = "") -> Response:
    return _handle()


def _handle() -> Response:
    try:
        return _process(request.method, _raw_path())
    except ServingStatus as exc:
        raise status_error(exc.status, exc.message) from exc
    except ProtocolError:
        raise
    except GatewayError as exc:
        raise gateway_error(exc) from exc


for _view, _methods in ((read, ["GET"]), (run, ["POST"]), (other, ["PUT", "DELETE", "PATCH", "OPTIONS"])):
    for _rule in ("/v1/", "/v1/<everything:path>"):
        bp.add_url_rule(
            _rule, _view.__name__, _view, methods=_methods,
            merge_slashes=False, strict_slashes=False, provide_automatic_options=False,
        )  # fmt: skip


def status_error(code: grpc.StatusCode, message: str, *, retry_after: float | None = None) -> ProtocolError:
    error = ProtocolError(HTTP_STATUS.get(code, 500), message, retry_after=retry_after)
    error.serving_status = ServingStatus(code, message)  # the status it stands for (the model server counts them)
    return error


def gateway_error(error: GatewayError) -> ProtocolError:
    """A backend's error as TF Serving's REST API would answer it: the server's own code and words when it had some
    (a local failure, such as a deadline that ran out at the gateway, keeps the gateway's)."""
    status = error.serving_status
    if status is None:
        return ProtocolError(error.status_code, error.message, retry_after=error.retry_after)
    return status_error(status.status, status.message, retry_after=error.retry_after)


def _raw_path() -> bytes:
    """The path as the client sent it, still percent-encoded (TF Serving matches its patterns on that)."""
    # gunicorn and Werkzeug keep the request target; elsewhere the decoded PATH_INFO stands in for it.
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.environ.get("PATH_INFO", "")
    path = urlsplit(raw).path  # the query is not part of it; an absolute-form target loses its host
    return path.encode("latin-1", "replace")  # WSGI strings carry the request's bytes as latin-1


def _decoded(part: bytes) -> str:
    """DecodeArg: curl_easy_unescape, which decodes %XX and leaves anything else (``+`` too) as it is."""
    return unquote_to_bytes(part).decode("utf-8", "surrogateescape")


def _process(method: str, raw_path: bytes) -> Response:
    """HttpRestApiHandler::ProcessRequest, and the dispatcher's CORS preflight before it."""
    shown = raw_path.decode("latin-1")
    if method == "OPTIONS":
        if re.search(r"https?://", request.headers.get("Origin", "")):
            return Response(b"", status=200)
        raise status_error(grpc.StatusCode.FAILED_PRECONDITION, "Origin header is missing in CORS preflight")
    pattern = PREDICTION_PATH if method == "POST" else STATUS_PATH if method == "GET" else None
    match = pattern.fullmatch(raw_path) if pattern is not None else None
    name = _decoded(match.group(1)) if match is not None and match.group(1) else ""
    version = label = None
    if match is not None and match.group(2):
        version = int(match.group(2))
        if version > _INT64_MAX:  # absl::SimpleAtoi into an int64
            raise status_error(
                grpc.StatusCode.INVALID_ARGUMENT, f"Failed to convert version: {match.group(2).decode()} to numeric."
            )
    if match is not None and match.group(3):
        label = _decoded(match.group(3))
    if match is not None and method == "POST":
        verb = match.group(4).decode()
        if verb in ("predict", "classify", "regress"):  # compared as written: "PREDICT" matched, but is no verb
            name_request(name, verb)
            body = read_body(request)
            return _json(
                {"predict": _predict, "classify": _classify, "regress": _regress}[verb](name, version, label, body)
            )
    elif match is not None and method == "GET":
        if match.group(4) == b"metadata":
            name_request(name, "metadata")
            return _json(_metadata(name, version, label))
        name_request(name, "status")
        return _json(_status(name, version))
    raise status_error(grpc.StatusCode.INVALID_ARGUMENT, f"Malformed request: {method} {shown}")


def _json(text: str) -> Response:
    return Response(text, status=200, mimetype="application/json")


def _backend() -> Backend:
    return serving().backend


def _ref(name: str, version: int | None, label: str | None, signature: str = "") -> ModelRef:
    if label is not None and not is_label(label):
        # No model config can give such a label, so no server knows it.
        raise status_error(grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
    return ModelRef(name, version, label, signature or DEFAULT_SIGNATURE)


def predict_text(name: str, version: int | None, label: str | None, body: bytes) -> str:
    """A TF Serving REST predict body answered as TF Serving's REST API answers it (its JSON text), its failures as
    the REST API's ProtocolError (the Seldon surface passes ``jsonData`` through this)."""
    try:
        return _predict(name, version, label, body)
    except ServingStatus as exc:
        raise status_error(exc.status, exc.message) from exc
    except ProtocolError:
        raise
    except GatewayError as exc:
        raise gateway_error(exc) from exc


def _predict(name: str, version: int | None, label: str | None, body: bytes) -> str:
    """ProcessPredictRequest: the JSON read against the signature's inputs (GetInfoMap), Predict, the JSON out."""
    doc = parse(body)

    def input_types(signature: str) -> Mapping[str, int]:
        key = signature or DEFAULT_SIGNATURE
        try:
            return signature_tensors(_backend(), _ref(name, version, label, key), own_signatures=True).inputs
        except SignatureNotFound:
            raise ServingStatus(
                grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature name: "{key}" not found in signature def'
            ) from None

    parsed = predict_request(doc, input_types)
    outputs = _backend().predict(_ref(name, version, label, parsed.signature_name), parsed.inputs)
    return predict_response(outputs, parsed.format)


def _classify(name: str, version: int | None, label: str | None, body: bytes) -> str:
    signature, examples = examples_input(parse(body))
    response = _backend().classify(_ref(name, version, label, signature), examples)
    return classification_json(response.result)


def _regress(name: str, version: int | None, label: str | None, body: bytes) -> str:
    signature, examples = examples_input(parse(body))
    response = _backend().regress(_ref(name, version, label, signature), examples)
    return regression_json(response.result)


def _status(name: str, version: int | None) -> str:
    """ProcessModelStatusRequest: GetModelStatus's answer, ``version`` as a string, states and codes by name."""
    if not name:
        raise status_error(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
    response = status_response(_backend().model_status(name, version))
    return _dumps(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))


def status_response(statuses: list[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        entry = response.model_version_status.add(version=status.version, state=_STATE.Value(status.state))
        code = _ERROR_CODE.values_by_name.get(status.error_code) or _ERROR_CODE.values_by_name["UNKNOWN"]
        entry.status.error_code = code.number
        entry.status.error_message = status.error_message
    return response


def _metadata(name: str, version: int | None, label: str | None) -> str:
    """ProcessModelMetadataRequest: the model spec and ``{"signature_def": SignatureDefMap}``, field names kept."""
    if not name:
        raise status_error(grpc.StatusCode.INVALID_ARGUMENT, "Missing model name in request.")
    response, signature_map = signature_defs(_backend(), _ref(name, version, label))
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return _dumps(
        {
            "model_spec": json_format.MessageToDict(response.model_spec, **options),
            "metadata": {"signature_def": json_format.MessageToDict(signature_map, **options)},
        }
    )


def _dumps(value: Any) -> str:
    """JSON text with ``<``, ``>`` and ``&`` escaped, as every JSON answer of the gateway has them."""
    return html_safe(json.dumps(value, indent=1))
