"""Operations endpoints: liveness, readiness of the pipeline's servables, Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue

from app.errors import GatewayError
from app.pipeline_check import check_pipeline, misfits_of
from app.web.extensions import serving

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Alive: the process answers. Says nothing of the models."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready: every servable the pipeline calls has an AVAILABLE version; else 503 naming those that do not.

    A model config the server refused leaves it serving the previous one, so it stays ready; the body says why.
    """
    ext = serving()
    report, ready = {}, True
    try:
        backend = ext.backend
    except GatewayError as exc:  # the backend could not start (Serving turns every cause into ServingUnavailable)
        return jsonify(status="unavailable", error=exc.message), 503, {"Retry-After": "5"}
    for name in ext.pipeline_config.servables:
        try:
            statuses = backend.model_status(name)
        except GatewayError as exc:
            report[name], ready = {"available": False, "error": exc.message}, False
            continue
        available = [s.version for s in statuses if s.state == "AVAILABLE"]
        report[name] = {"available": bool(available), "versions": available}
        ready = ready and bool(available)
    body = {"servables": report}
    state = backend.config_state()
    if state is not None and state.refused:  # still ready (the previous config serves): this says why
        body["model_config"] = {"refused": state.refused}
    if ready:  # every servable answers: do they fit the pipeline file?
        misfits = misfits_of(check_pipeline(backend, ext.pipeline_config))
        if misfits:
            ready = False
            body["misfits"] = [f"{stage}: {misfit}" for stage, misfit in misfits]
    status = 200 if ready else 503
    headers = {} if ready else {"Retry-After": "5"}
    return jsonify(status="ready" if ready else "unavailable", **body), status, headers


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text format: requests by route and status, latencies, in-flight, servable calls."""
    body, content_type = current_app.extensions["metrics"].exposition()
    return Response(body, content_type=content_type)
