"""The JSON API, version 1, under /api/v1/: search, translate, detect, models, gallery thumbnails, OpenAPI document.

Views read the request with ``common`` (upload, k, pins), run the pipeline and shape
its result; every failure is a ``GatewayError`` that the app's one handler renders as
``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from flask.typing import ResponseReturnValue

from app import images
from app.errors import GatewayError
from app.pipeline_check import check_pipeline
from app.serving.base import Backend, VersionStatus
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
from app.web.extensions import serving

bp = Blueprint("api", __name__, url_prefix="/api/v1")

_THUMBNAILS = "api.gallery_thumbnails"
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
    backend = serving().backend  # ServingUnavailable (503) when it cannot start, e.g. a broken serving_models.config
    rollouts = serving().pipeline.rollouts  # looks at the pipeline file, as a request would
    # The labels in force (with TF Serving, serving_models.config's) and a refused config, when the server can tell
    # (the embedded one can; TF Serving only logs). With the grpc backend the config may live only beside TF
    # Serving: the statuses still help.
    state = backend.config_state()
    labels = serving().version_labels() or {}
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
    # Built once per app: the settings it describes are frozen, and the document is open to anyone.
    document = current_app.extensions.get("openapi_document")
    if document is None:
        document = current_app.extensions.setdefault("openapi_document", openapi.document(settings()))
    return jsonify(document)


def thumbnails() -> GalleryThumbnails:
    """The thumbnails of the gallery the pipeline file names now (a reload may name another; every shard of a sharded
    one), opened on first use."""
    servables = serving().pipeline_config.search.servables
    opened = current_app.extensions.setdefault(_THUMBNAILS, {})
    found = opened.get(servables)
    if found is None:
        root = settings().servable_root()
        # setdefault: two first requests at once still share one instance.
        found = opened.setdefault(servables, GalleryThumbnails([root / servable for servable in servables]))
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
