"""The Open Inference Protocol (KServe v2) REST API at the gateway, for every servable, on either backend.

- ``GET /v2``: server metadata; ``GET /v2/health/live``, ``GET /v2/health/ready`` (every servable of
  serving_models.config has an AVAILABLE version: 200, else 503), open like /healthz.
- ``GET /v2/models/<name>[/versions/<version>]``: model metadata (the ``serving_default`` signature's
  tensors, the AVAILABLE versions); ``.../ready``: 200 ``{"name", "ready": true}``, 503 when not ready.
- ``POST /v2/models/<name>[/versions/<version>]/infer``: typed tensors in and out (``app.protocols.v2_tensors``),
  as JSON or as binary data after it (``app.protocols.v2_binary``, the binary tensor data extension), through
  Predict on the signature ``serving_default`` or the one ``parameters.signature_name`` names, checked against
  the backend's cached metadata (no metadata call per request).

A version is a TF Serving version number, or a version label (``/versions/stable``). Errors are
``{"error": "<message>"}`` with the gateway's status for them (400 bad request, 404 unknown model,
version, label or signature, 503 serving unavailable, 504 deadline, 502 model failure).
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.errors import BadInput, GatewayError, UnknownSignature
from app.protocols import v2_binary, v2_tensors
from app.serving.base import DEFAULT_SIGNATURE, Backend, ModelRef, is_label, version_number
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
from app.views.openapi import API_VERSION
from app.views.params import BinaryDataHeaders, InferencePath
from app.web.extensions import serving
from app.web.operations import Answer, JsonBody, answered_elsewhere, declare, operation

bp = Blueprint("inference_v2", __name__)
protocol_surface(bp)

SERVER_NAME = "portrait-gateway"
PLATFORM = "tensorflow_savedmodel"
_TAGS = ("inference-v2",)
# What the surface answers besides 200: reading a model, and running one.
_READS = (400, 404, 405, 500, 502, 503, 504)
_RUNS = (*_READS, 408, 413)
_READY = "Server ready: every servable of serving_models.config has an AVAILABLE version"
# The binary tensor data extension of the infer operation (app/protocols/v2_binary.py).
_BINARY = (
    "Tensors come in JSON, or as bytes after it (the binary tensor data extension): the body is then the "
    "JSON request, `Inference-Header-Content-Length` bytes long, followed by the bytes of each input whose "
    "`parameters.binary_data_size` says how many, in the order of `inputs` (row-major, little-endian, no "
    "padding; a BOOL one byte; a BYTES element its length as a 4-byte little-endian unsigned integer, then its "
    "bytes). Outputs whose `parameters.binary_data` is true (or, where they do not say, when the request's "
    "`parameters.binary_data_output` is) come back so: `application/octet-stream`, the JSON, then their bytes "
    "in the order of `outputs`, each with `parameters.binary_data_size`, the JSON's length in the same header."
)


@bp.get("/v2")
@bp.get("/v2/")
@operation(
    "v2ServerMetadata",
    "Server metadata",
    tags=_TAGS,
    answers={200: Answer("The server", answers.V2ServerMetadata)},
    errors=_READS,
    error_model=answers.ProtocolError,
    needs_key=True,
)
def server_metadata() -> ResponseReturnValue:
    answer = answers.V2ServerMetadata(name=SERVER_NAME, version=API_VERSION, extensions=[v2_binary.EXTENSION])
    return jsonify(answer.body())


@bp.get("/v2/health/live")
@operation("v2Live", "Server live", tags=_TAGS, answers={200: Answer("Alive", answers.V2Health)})  # open, like /healthz
def live() -> ResponseReturnValue:
    return jsonify(answers.V2Health(live=True).body())


@bp.get("/v2/health/ready")
@operation(
    "v2Ready",
    _READY,
    tags=_TAGS,
    answers={
        200: Answer("Ready", answers.V2Health),
        503: Answer("Not ready", answers.V2Health, headers=("Retry-After",)),
    },
)  # open, like /readyz
def ready() -> ResponseReturnValue:
    """Ready when every servable the model server is configured with has an AVAILABLE version."""
    backend = _backend()
    missing = [name for name in served_names() if not _available(backend, name)]
    answer = answers.V2Health(live=True, ready=not missing, not_ready=missing or None)
    if missing:
        return jsonify(answer.body()), 503, {"Retry-After": "5"}
    return jsonify(answer.body())


@bp.get("/v2/models/<model_name>")
@bp.get("/v2/models/<model_name>/versions/<model_version>")
@operation(
    "v2ModelMetadata",
    "Model metadata: the serving_default signature's tensors, the AVAILABLE versions",
    tags=_TAGS,
    path_params=InferencePath,
    answers={200: Answer("The model", answers.V2ModelMetadata)},
    errors=_READS,
    error_model=answers.ProtocolError,
    needs_key=True,
)
def model_metadata(model_name: str, model_version: str | None = None) -> ResponseReturnValue:
    name_request(model_name, "metadata")
    backend = _backend()
    ref = _ref(model_name, model_version)
    response, signature_map = signature_defs(backend, ref)
    signature = signature_map.signature_def.get(DEFAULT_SIGNATURE)
    if signature is None:
        raise _unknown_signature(ref, response.model_spec.version.value, signature_map.signature_def)
    available = [str(s.version) for s in backend.model_status(model_name) if s.state == "AVAILABLE"]
    answer = answers.V2ModelMetadata(
        name=model_name,
        versions=available,
        platform=PLATFORM,
        inputs=[v2_tensors.tensor_metadata(alias, signature.inputs[alias]) for alias in sorted(signature.inputs)],
        outputs=[v2_tensors.tensor_metadata(alias, signature.outputs[alias]) for alias in sorted(signature.outputs)],
    )
    return jsonify(answer.body())


@bp.get("/v2/models/<model_name>/ready")
@bp.get("/v2/models/<model_name>/versions/<model_version>/ready")
@operation(
    "v2ModelReady",
    "Model ready",
    tags=_TAGS,
    path_params=InferencePath,
    answers={
        200: Answer("Ready", answers.V2ModelReady),
        503: Answer("Not ready, or the model server cannot be reached", (answers.V2ModelReady, answers.ProtocolError)),
    },
    errors=_READS,
    error_model=answers.ProtocolError,
    needs_key=True,
)
def model_ready(model_name: str, model_version: str | None = None) -> ResponseReturnValue:
    """Ready: the name (and version or label) resolves to an AVAILABLE version. A model the server does not know
    at all is a 404."""
    name_request(model_name, "ready")
    backend = _backend()
    backend.model_status(model_name)  # NOT_FOUND for a model with no version at all: 404
    try:
        backend.get_model_metadata(_ref(model_name, model_version))
        is_ready = True
    except GatewayError as exc:
        if exc.status_code not in (400, 404):
            raise
        is_ready = False
    return jsonify(answers.V2ModelReady(name=model_name, ready=is_ready).body()), 200 if is_ready else 503


@bp.post("/v2/models/<model_name>/infer")
@bp.post("/v2/models/<model_name>/versions/<model_version>/infer")
@operation(
    "v2Infer",
    "Inference: typed tensors through Predict",
    description=_BINARY,
    tags=_TAGS,
    path_params=InferencePath,
    headers=BinaryDataHeaders,
    body=JsonBody(v2_tensors.InferenceRequest, binary=True),
    answers={
        200: Answer(
            "The outputs: JSON, or with binary outputs the JSON then their bytes",
            answers.V2InferenceResponse,
            media_types=(v2_binary.CONTENT_TYPE,),
            headers=(v2_binary.HEADER,),
        )
    },
    errors=_RUNS,
    error_model=answers.ProtocolError,
    needs_key=True,
    rate_limited=True,
    runs_models=True,
)
def infer(model_name: str, model_version: str | None = None) -> ResponseReturnValue:
    name = model_name
    name_request(name, "infer")
    inference = v2_binary.read_request(read_body(request), request.headers.get(v2_binary.HEADER))
    backend = _backend()
    signature_name = (inference.request.parameters or {}).get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature_name, str) or not signature_name:
        raise BadInput("parameters.signature_name must be a signature's name")
    ref = _ref(name, model_version, signature_name)
    try:
        signature = signature_tensors(backend, ref, own_signatures=False)
    except SignatureNotFound as exc:
        raise _unknown_signature(ref, exc.version, exc.signatures) from None
    inputs = {}
    for item, data in zip(inference.request.inputs, inference.binary_inputs, strict=True):
        if item.name not in signature.inputs:
            known = ", ".join(sorted(signature.inputs)) or "none"
            raise BadInput(f"{name} has no input {item.name!r} in signature {signature_name!r} (inputs: {known})")
        if item.name in inputs:
            raise BadInput(f"input {item.name!r} is given twice")
        expected = v2_tensors.datatype_of(signature.inputs[item.name])
        if item.datatype != expected:
            raise BadInput(f"input {item.name!r} of {name} is {expected}, not {item.datatype}")
        inputs[item.name] = v2_binary.input_array(item, data)
    wanted = [output.name for output in inference.request.outputs or ()]
    for output_name in wanted:
        if output_name not in signature.outputs:
            known = ", ".join(sorted(signature.outputs))
            raise BadInput(f"{name} has no output {output_name!r} in signature {signature_name!r} (outputs: {known})")
    if len(set(wanted)) != len(wanted):
        raise BadInput("an output is asked for twice")
    served = backend.predict_versioned(ref, inputs)
    tensors, binary = [], []
    for output in wanted or sorted(served.outputs):
        tensor, data = v2_binary.output_tensor(
            output, served.outputs[output], binary=inference.output_is_binary(output)
        )
        tensors.append(tensor)
        binary.append(data)
    answer = answers.V2InferenceResponse(
        model_name=name,
        model_version=None if served.version is None else str(served.version),
        id=inference.request.id,
        outputs=tensors,
    )
    if not any(binary):  # as Triton: no bytes after the JSON (though an empty output may be "binary"), plain JSON
        return jsonify(answer.body())
    header = current_app.json.dumps(answer.body()).encode("utf-8")
    return Response(
        b"".join([header, *binary]),
        content_type=v2_binary.CONTENT_TYPE,
        headers={v2_binary.HEADER: str(len(header))},
    )


@bp.route("/v2/<everything:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], merge_slashes=False)
@declare(needs_key=True)
def unknown(rest: str) -> ResponseReturnValue:
    """Anything else under /v2: 405 where another method would be answered, else 404; as the protocol's JSON."""
    allowed = answered_elsewhere(("GET", "POST"))
    if allowed and request.method not in allowed:
        raise ProtocolError(405, f"{request.method} {request.path} is not allowed: use {' or '.join(allowed)}")
    raise ProtocolError(404, f"no such endpoint: {request.method} {request.path}")


# -- helpers ---------------------------------------------------------------------------------------


def _backend() -> Backend:
    return serving().backend


def _ref(name: str, version: str | None, signature: str = DEFAULT_SIGNATURE) -> ModelRef:
    """A version is a number, or else a version label."""
    if version is None:
        return ModelRef(name, signature=signature)
    number = version_number(version)
    if number is not None:
        return ModelRef(name, number, signature=signature)
    if not is_label(version):
        raise BadInput(f"version {version[:80]!r} is neither a version number nor a version label")
    return ModelRef(name, label=version, signature=signature)


def _unknown_signature(ref: ModelRef, version: int, signatures: Iterable[str]) -> UnknownSignature:
    """The version's signatures, but the SavedModel's own ("__saved_model_init_op"): those are not for calling."""
    known = ", ".join(sorted(key for key in signatures if not key.startswith("__"))) or "none"
    return UnknownSignature(
        f"{ref.name} version {version} has no signature {ref.signature!r} "
        f"(signatures: {known}); name one in parameters.signature_name"
    )


def _available(backend: Backend, name: str) -> bool:
    try:
        return any(status.state == "AVAILABLE" for status in backend.model_status(name))
    except GatewayError:
        return False


def served_names() -> list[str]:
    """The servables the model server is configured with: the embedded server says; TF Serving cannot (it has no
    call that lists models), so serving_models.config says, or where it cannot be read, the pipeline's servables."""
    labels = serving().version_labels()
    return sorted(labels if labels is not None else serving().pipeline_config.servables)
