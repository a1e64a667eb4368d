"""The JSON API, version 1, under /api/v1/: search, translate, detect, models, gallery thumbnails, OpenAPI document.

Views read the request with ``common`` (upload, k, pins), run the pipeline and shape
its result; every failure is a ``GatewayError`` that the app's one handler renders as
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from flask.typing import ResponseReturnValue

from app import images
from app.errors import GatewayError, ServingUnavailable
from app.extensions import serving
from app.modelzoo.cli import servable_root
from app.pipeline_check import check_pipeline
from app.serving.base import Backend, VersionStatus
from app.serving.model_config import ModelConfigError, load_model_config
from app.thumbnails import GalleryThumbnails
from app.views import openapi
from app.views.common import (
    client,
    k_of,
    pipeline,
    read_photo_request,
    result_json,
    server_timing,
    settings,
    timings_ms,
)
from app.views.params import DetectParams, GalleryParams, NoParams, SearchParams, TranslateParams, read_params

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

_THUMBNAILS = "api.gallery_thumbnails"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
# A thumbnail named with its gallery version never changes; "latest" moves when a new index is built.
_PINNED_CACHE = "public, max-age=31536000, immutable"
_LATEST_CACHE = "public, max-age=60"


@bp.post("/search")
def search() -> ResponseReturnValue:
    """The k gallery faces nearest to the best face of the photo, each with a thumbnail URL."""
    data, params = read_photo_request(SearchParams, request, allow_raw_body=True)
    result = pipeline().run(data, k=k_of(params), pins=params.pins(), translate=False, client=client())
    return _timed(jsonify(result_json(result, with_images=params.images)), result.timings, result.arms)


@bp.post("/translate")
def translate() -> ResponseReturnValue:
    """The anime version of the best face: a PNG, or JSON with it in base64 when the client asks for JSON."""
    data, params = read_photo_request(TranslateParams, request, allow_raw_body=True)
    as_json = _translation_as_json(params.format)
    result = pipeline().run(data, pins=params.pins(), search=False, client=client())
    png = images.encode_png(result.anime)
    if as_json:
        body = result_json(result, with_images=False)
        body["anime_png_base64"] = base64.b64encode(png).decode("ascii")
        response = jsonify(body)
    else:
        response = Response(png, mimetype="image/png")
        response.headers["X-Content-Type-Options"] = "nosniff"
    response.vary.add("Accept")  # one URL, two representations
    return _timed(response, result.timings, result.arms)


@bp.post("/detect")
def detect() -> ResponseReturnValue:
    """Every face above the threshold, best first; a photo with no face is an empty list, not an error."""
    data, params = read_photo_request(DetectParams, request, allow_raw_body=True)
    photo, faces = pipeline().find_faces(data, params.pins(), client=client())
    body = {
        "faces": [face.to_dict() for face in faces],
        "image": {"width": photo.original_size[0], "height": photo.original_size[1]},
        "timings_ms": timings_ms(photo.timings),
        "arms": dict(photo.arms),
    }
    return _timed(jsonify(body), photo.timings, photo.arms)


@bp.get("/models")
def models() -> ResponseReturnValue:
    """Each pipeline servable with its versions, their states and the version labels; a failing one names its error.

    Also the pipeline file's wiring, stage by stage, whether each stage's servable fits it, why a
    newer pipeline file was refused (if it was), and each stage's rollout with the state of its arms.
    """
    read_params(NoParams, request)
    try:
        backend = serving().backend
        rollouts = serving().pipeline.rollouts  # looks at the pipeline file, as a request would
    except (ValueError, OSError) as exc:  # e.g. a broken serving_models.config for the local backend
        raise ServingUnavailable(f"the serving backend cannot start: {exc}", retry_after=5) from exc
    # The labels in force and a refused config, when the server can tell (the embedded one can; TF Serving only logs).
    state = backend.config_state()
    labels = state.labels if state is not None else _configured_labels()
    config = serving().pipeline_config
    servables = []
    for name in config.servables:
        entry = {"name": name, "labels": dict(labels.get(name, {}))}
        try:
            statuses = backend.model_status(name)
        except GatewayError as exc:
            entry["error"] = exc.to_dict()["error"]
        else:
            entry["versions"] = [_version_dict(status, entry["labels"]) for status in statuses]
        servables.append(entry)
    body = {"servables": servables, "pipeline": _pipeline_report(backend), "rollouts": rollouts.describe(look=True)}
    if serving().pipeline_file.refused is not None:  # the last good pipeline file serves
        body["pipeline"]["refused"] = serving().pipeline_file.refused
    if state is not None:  # refused: why the newest serving_models.config is not in force (the previous one serves)
        body["model_config"] = {"refused": state.refused}
    return jsonify(body)


# merge_slashes=False: "//etc/passwd" is a 404 here, not a redirect to a name that looks relative.
@bp.get("/gallery/<path:name>.jpg", merge_slashes=False)
def gallery_thumbnail(name: str) -> ResponseReturnValue:
    """The thumbnail JPEG of a gallery face, found by the name the index lists (never a path built from it)."""
    version = read_params(GalleryParams, request).version
    response = send_file(thumbnails().path(name, version), mimetype="image/jpeg", conditional=True)
    response.headers["Cache-Control"] = _LATEST_CACHE if version is None else _PINNED_CACHE
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/openapi.json")
def openapi_document() -> ResponseReturnValue:
    read_params(NoParams, request)
    return jsonify(openapi.document(settings()))


def thumbnails() -> GalleryThumbnails:
    """This app's gallery thumbnails, opened on first use (their index files are cached per version)."""
    found = current_app.extensions.get(_THUMBNAILS)
    if found is None:
        base = servable_root(settings()) / serving().pipeline_config.search.servable
        # setdefault: two first requests at once still share one instance.
        found = current_app.extensions.setdefault(_THUMBNAILS, GalleryThumbnails(base))
    return found


# -- helpers ---------------------------------------------------------------------------------------


def _timed(response: Response, timings: Mapping[str, float], arms: Mapping[str, str]) -> Response:
    response.headers["Server-Timing"] = server_timing(timings, arms)
    return response


def _translation_as_json(chosen: str | None) -> bool:
    """``format=json|png`` wins; otherwise the Accept header, with PNG for clients that accept anything."""
    if chosen is not None:
        return chosen == "json"
    best = request.accept_mimetypes.best_match(["image/png", "application/json"], default="image/png")
    return best == "application/json"


def _configured_labels() -> dict[str, Mapping[str, int]]:
    """Version labels per servable from serving_models.config: GetModelStatus does not report them."""
    try:
        config = load_model_config(settings().model_config, models_root=settings().models_root, check_paths=False)
    except (ModelConfigError, OSError) as exc:
        # With the grpc backend the config may live only beside TF Serving: the statuses still help.
        log.warning("version labels unavailable: %s", exc)
        return {}
    return {servable.name: servable.labels for servable in config.servables}


def _version_dict(status: VersionStatus, labels: Mapping[str, int]) -> dict:
    entry = {
        "version": status.version,
        "state": status.state,
        "labels": sorted(label for label, version in labels.items() if version == status.version),
    }
    if status.error_code != "OK":
        entry["error"] = {"code": status.error_code, "message": status.error_message}
    return entry


def _pipeline_report(backend: Backend) -> dict:
    """The pipeline file's wiring and, per stage, whether the servable's current version fits it."""
    config = serving().pipeline_config
    reports = check_pipeline(backend, config)
    stages = {}
    for name, stage in config.model_dump(mode="json").items():
        report = reports[name]
        stages[name] = {
            **stage,
            "fits": report.fits,
            "misfits": [misfit.to_dict() for misfit in report.misfits],
            **({"unchecked": report.unreachable} if report.unreachable else {}),
        }
    return {"source": config.source, "stages": stages}
