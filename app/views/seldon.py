"""Seldon's prediction protocol at the gateway, for every servable: what Seldon's ingress and its clients call.

- ``POST /seldon/<namespace>/<servable>/api/v1.0/predictions``, the path Seldon's ingress and ``SeldonClient``
  use (``/seldon/<servable>/api/v1.0/predictions`` when the client names no namespace); the namespace is not
  looked at (the gateway serves one set of servables).
- ``POST /api/v1.0/predictions``: to the servable GATEWAY_SELDON_SERVABLE names (a Seldon microservice's path).

A request's tensor (``data.ndarray``, ``data.tensor`` or ``data.tftensor``) goes to one input of the servable's
signature through Predict and one output comes back, in the request's kind, as Seldon's TF Serving proxy does;
the query parameters choose what its parameters choose (``signature_name``, ``model_input``, ``model_output``;
an input or output may be left out when the signature has one). ``jsonData`` is a TF Serving REST predict body,
passed through to TF Serving's REST API and its answer returned as ``jsonData``. ``names`` and ``meta`` (puid,
tags) are echoed. Errors are Seldon's ``{"status": {"code", "info", "reason", "status": "FAILURE"}}`` with a
4xx or 5xx, whoever raised them. Keys, the rate limit and metrics are those of the other model surfaces.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.errors import BadInput, NotFound
from app.protocols import seldon_messages
from app.serving import tensors
from app.serving.base import DEFAULT_SIGNATURE, ModelRef
from app.views import answers
from app.views.model_apis import (
    ProtocolError,
    SignatureNotFound,
    name_request,
    protocol_surface,
    read_body,
    signature_tensors,
)
from app.views.params import SeldonParams, SeldonPath
from app.views.tfserving_rest import predict_text
from app.web.extensions import serving
from app.web.operations import Answer, JsonBody, answered_elsewhere, declare, operation

bp = Blueprint("seldon", __name__)
protocol_surface(bp, lambda error: seldon_messages.failure(error.status_code, error.message))

_TAGS = ("seldon",)
_ERRORS = (400, 404, 405, 408, 413, 500, 502, 503, 504)


@bp.post("/seldon/<namespace>/<model_name>/api/v1.0/predictions")
@bp.post("/seldon/<model_name>/api/v1.0/predictions")
@bp.post("/api/v1.0/predictions")
@operation(
    "seldonPredict",
    "A prediction in Seldon's protocol: one tensor through Predict, or a TF Serving REST body (jsonData)",
    description=(
        "The answer takes the request's kind (ndarray, tensor or tftensor); names and meta (puid, tags) are "
        "echoed. Without a servable in the path, GATEWAY_SELDON_SERVABLE names it."
    ),
    tags=_TAGS,
    path_params=SeldonPath,
    query=SeldonParams,
    body=JsonBody(seldon_messages.SeldonRequest),
    answers={200: Answer("The prediction", answers.SeldonAnswer)},
    errors=_ERRORS,
    error_model=answers.SeldonError,
    needs_key=True,
    rate_limited=True,
    runs_models=True,
)
def predict(model_name: str | None = None, namespace: str | None = None) -> ResponseReturnValue:
    from app.views.params import read_params

    params = read_params(SeldonParams, request, form=False)
    name = model_name or current_app.config["GATEWAY_SETTINGS"].seldon_servable
    if not name:
        raise NotFound(
            "no servable for this path: set GATEWAY_SELDON_SERVABLE, or call "
            "/seldon/<namespace>/<servable>/api/v1.0/predictions"
        )
    name_request(name, "predict")
    message = seldon_messages.read_request(read_body(request))
    signature = params.signature_name or DEFAULT_SIGNATURE
    if message.json_data is not None:
        if not isinstance(message.json_data, dict):
            raise BadInput("jsonData must be a TF Serving REST predict body: an object with instances or inputs")
        body = current_app.json.dumps(message.json_data).encode("utf-8")
        answer = answers.SeldonAnswer(
            jsonData=current_app.json.loads(predict_text(name, None, None, body)),
            meta=seldon_messages.answer_meta(message.meta, name, None),
        )
        return jsonify(answer.body())
    assert message.data is not None
    backend = serving().backend
    ref = ModelRef(name, signature=signature)
    try:
        found = signature_tensors(backend, ref, own_signatures=False)
    except SignatureNotFound as exc:
        known = ", ".join(sorted(s for s in exc.signatures if not s.startswith("__"))) or "none"
        raise NotFound(f"{name} has no signature {signature!r} (signatures: {known})") from None
    model_input = _one(params.model_input, found.inputs, "input", name, signature)
    model_output = _one(params.model_output, found.outputs, "output", name, signature)
    array = seldon_messages.input_array(message.data, tensors.numpy_dtype(found.inputs[model_input]))
    served = backend.predict_versioned(ref, {model_input: array})
    answer = answers.SeldonAnswer(
        data=seldon_messages.output_data(served.outputs[model_output], message.data.kind, message.data.names),
        meta=seldon_messages.answer_meta(message.meta, name, served.version),
    )
    return jsonify(answer.body())


@bp.route("/seldon/<everything:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"], merge_slashes=False)
@declare(needs_key=True)
def unknown(rest: str) -> ResponseReturnValue:
    """Anything else under /seldon/: 405 where another method would be answered, else 404; in Seldon's shape."""
    allowed = answered_elsewhere(("POST",))
    if allowed and request.method not in allowed:
        raise ProtocolError(405, f"{request.method} {request.path} is not allowed: use {' or '.join(allowed)}")
    raise ProtocolError(404, f"no such endpoint: {request.method} {request.path} (predictions are at "
                             "/seldon/<namespace>/<servable>/api/v1.0/predictions)")  # fmt: skip


def _one(chosen: str | None, tensors_of: dict[str, int], role: str, name: str, signature: str) -> str:
    """The input (or output) the request names, or the signature's only one; BadInput otherwise, naming them."""
    known = ", ".join(sorted(tensors_of)) or "none"
    if chosen is not None:
        if chosen not in tensors_of:
            raise BadInput(f"{name} has no {role} {chosen!r} in signature {signature!r} ({role}s: {known})")
        return chosen
    if len(tensors_of) != 1:
        raise BadInput(
            f"{name}'s signature {signature!r} has {len(tensors_of)} {role}s ({known}): name one with "
            f"?model_{role}=..., or send a whole TF Serving body as jsonData"
        )
    return next(iter(tensors_of))
