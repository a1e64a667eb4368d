"""Error pages and error JSON: content negotiation, the one handler every GatewayError goes through, and the
models of the error bodies (the OpenAPI document's ``Error`` and ``ProtocolError``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel, ConfigDict, Field
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.errors import GatewayError, PayloadTooLarge

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(examples=["no_face"])
    message: str


class Error(BaseModel):
    """Every error of the JSON API, the pages' JSON and the operations endpoints."""

    model_config = ConfigDict(extra="forbid")

    error: ErrorDetail


class ProtocolError(BaseModel):
    """Every error of TF Serving's REST API and of the Open Inference Protocol (``error_body``)."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="What went wrong, in the server's words")


def init_app(app: Flask) -> None:
    """Render every error the app raises: gateway errors, HTTP errors and, without detail, bugs."""
    app.register_error_handler(GatewayError, render_error)
    app.register_error_handler(HTTPException, _render_http_exception)
    app.register_error_handler(Exception, _render_unexpected)


_BODIES = "error_bodies"


def error_body(blueprint: Blueprint, body: Callable[[GatewayError], dict[str, Any]]) -> None:
    """Give every error of a blueprint's requests its own JSON body, whatever raised it (a rate limit, a key
    check, a size limit, a view): a wire protocol's error format. Status and headers stay the handler's."""
    blueprint.record_once(lambda state: state.app.extensions.setdefault(_BODIES, {}).update({blueprint.name: body}))


def wants_json() -> bool:
    """JSON for the API and for clients that prefer it; an HTML page for browsers."""
    if request.path.startswith("/api/") or request.path in ("/healthz", "/readyz"):
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


def render_error(error: GatewayError) -> ResponseReturnValue:
    """Every GatewayError: JSON ``{"error": {"code", "message"}}`` or the page with a readable message."""
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    body = current_app.extensions.get(_BODIES, {}).get(request.blueprint)
    if body is not None:
        return jsonify(body(error)), error.status_code, headers
    if wants_json():
        return jsonify(Error.model_validate(error.to_dict()).model_dump()), error.status_code, headers
    page = render_template("error.html", error=error, status=error.status_code)
    return page, error.status_code, headers


def _render_http_exception(exc: HTTPException) -> ResponseReturnValue:
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length or 0
        return render_error(PayloadTooLarge(f"the request is larger than {limit:,} bytes"))
    error = GatewayError(exc.description or exc.name)
    error.status_code = exc.code or 500
    error.code = exc.name.lower().replace(" ", "_")
    response = render_error(error)
    if exc.code == 405 and isinstance(response, tuple):
        allowed = exc.get_response().headers.get("Allow")
        if allowed:
            response[2]["Allow"] = allowed
    return response


def _render_unexpected(exc: Exception) -> ResponseReturnValue:
    # A bug, not a client error: log it whole, tell the client nothing about the inside.
    log.exception("unexpected error on %s %s", request.method, request.path)
    return render_error(GatewayError("the gateway failed unexpectedly; the error has been logged"))
