"""Operations endpoints: liveness, readiness of the pipeline's servables, Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue

from app.errors import GatewayError
from app.pipeline_check import check_pipeline, misfits_of
from app.views import answers
from app.web.extensions import serving
from app.web.operations import Answer, declare, operation

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
@operation(
    "healthz",
    "Liveness: the process answers",
    tags=("operations",),
    answers={200: Answer("Alive", answers.Health)},
)
def healthz() -> ResponseReturnValue:
    """Alive: the process answers. Says nothing of the models."""
    return jsonify(answers.Health(status="ok").body())


@bp.get("/readyz")
@operation(
    "readyz",
    "Readiness: every pipeline servable has an AVAILABLE version",
    tags=("operations",),
    answers={
        200: Answer("Ready", answers.Readiness),
        503: Answer("Not ready; names the servables that are not", answers.Readiness, headers=("Retry-After",)),
    },
)
def readyz() -> ResponseReturnValue:
    """Ready: every servable the pipeline calls has an AVAILABLE version; else 503 naming those that do not.

    A model config the server refused leaves it serving the previous one, so it stays ready; the body says why.
    """
    ext = serving()
    report, ready = {}, True
    try:
        backend = ext.backend
    except GatewayError as exc:  # the backend could not start (Serving turns every cause into ServingUnavailable)
        answer = answers.Readiness(status="unavailable", error=exc.message)
        return jsonify(answer.body()), 503, {"Retry-After": "5"}
    for name in ext.pipeline_config.servables:
        try:
            statuses = backend.model_status(name)
        except GatewayError as exc:
            report[name], ready = answers.ServableReadiness(available=False, error=exc.message), False
            continue
        available = [s.version for s in statuses if s.state == "AVAILABLE"]
        report[name] = answers.ServableReadiness(available=bool(available), versions=available)
        ready = ready and bool(available)
    refused = None
    state = backend.config_state()
    if state is not None and state.refused:  # still ready (the previous config serves): this says why
        refused = answers.ModelConfigReport(refused=state.refused)
    misfits = None
    if ready:  # every servable answers: do they fit the pipeline file?
        found = misfits_of(check_pipeline(backend, ext.pipeline_config))
        if found:
            ready = False
            misfits = [f"{stage}: {misfit}" for stage, misfit in found]
    answer = answers.Readiness(
        status="ready" if ready else "unavailable", servables=report, model_config=refused, misfits=misfits
    )
    return jsonify(answer.body()), 200 if ready else 503, {} if ready else {"Retry-After": "5"}


@bp.get("/metrics")
@declare()  # Prometheus' text format, for the scraper: open, not in the API's document
def metrics() -> Response:
    """Prometheus text format: requests by route and status, latencies, in-flight, servable calls."""
    body, content_type = current_app.extensions["metrics"].exposition()
    return Response(body, content_type=content_type)
