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
from werkzeug import exceptions as http

from app import images
from app.errors import BadInput, GatewayError
from app.pipeline import EVERY_FACE
from app.pipeline_check import check_pipeline
from app.serving.base import Backend, VersionStatus
from app.thumbnails import GalleryThumbnails
from app.views import answers, openapi
from app.views.common import (
    PHOTO_ERRORS,
    SERVER_TIMING,
    client,
    faces_answer,
    k_of,
    pipeline,
    portrait_answer,
    read_photo_request,
    server_timing,
    settings,
    timings_ms,
)
from app.views.params import (
    DetectParams,
    GalleryParams,
    GalleryPath,
    NoParams,
    SearchParams,
    TranslateParams,
    read_params,
)
from app.web.extensions import serving
from app.web.operations import ANY_METHOD, PHOTO, Answer, answered_elsewhere, any_path_converter, declare, operation

bp = Blueprint("api", __name__, url_prefix="/api/v1")
any_path_converter(bp)

_THUMBNAILS = "api.gallery_thumbnails"
# A thumbnail named with its gallery version never changes; "latest" moves when a new index is built.
_PINNED_CACHE = "public, max-age=31536000, immutable"
_LATEST_CACHE = "public, max-age=60"


@bp.post("/search")
@operation(
    "search",
    "Gallery faces nearest to the face in a photo",
    description=(
        "Detects the best face, encodes it and returns the k nearest gallery faces, nearest first, each with the URL "
        "of its thumbnail. With `faces=all` (every face) or `face=<index>` (one face), the answer has one entry "
        "of `results` per face instead (`FacesSearchResult`); the encoder and the search are called once for all."
    ),
    tags=("portrait",),
    query=SearchParams,
    body=PHOTO,
    answers={
        200: Answer(
            "The face and its matches; with `faces` or `face`, the matches of each face",
            (answers.SearchResult, answers.FacesSearchResult),
            headers=(SERVER_TIMING,),
        )
    },
    errors=(*PHOTO_ERRORS, 422),
    needs_key=True,
    rate_limited=True,
    runs_models=True,
)
def search() -> ResponseReturnValue:
    """The k gallery faces nearest to the best face of the photo (or to each face asked for), each with a thumbnail
    URL."""
    data, params = read_photo_request(SearchParams, request, allow_raw_body=True)
    choice = params.face_choice()
    result = pipeline().run(data, k=k_of(params), pins=params.pins(), translate=False, client=client(), faces=choice)
    if params.asks_for_faces():
        answer = faces_answer(answers.FacesSearchResult, result, with_crops=params.images)
    else:
        answer = portrait_answer(answers.SearchResult, result, with_images=params.images)
    return _timed(jsonify(answer.body()), result.timings, result.arms)


@bp.post("/translate")
@operation(
    "translate",
    "The face in a photo as an anime-style image",
    description=(
        "A PNG by default; JSON with the PNG in base64 and the face box with `?format=json` or "
        "`Accept: application/json`. With `face=<index>`, that face instead of the best. With `faces=all`, JSON with "
        "one entry of `results` per face (`FacesTranslateResult`; so is `face=<index>` as JSON)."
    ),
    tags=("portrait",),
    query=TranslateParams,
    body=PHOTO,
    answers={
        200: Answer(
            "The translated face; with `faces` or `face` as JSON, each face's",
            (answers.TranslateResult, answers.FacesTranslateResult),
            media_types=("image/png",),
            headers=(SERVER_TIMING,),
        )
    },
    errors=(*PHOTO_ERRORS, 422),
    needs_key=True,
    rate_limited=True,
    runs_models=True,
)
def translate() -> ResponseReturnValue:
    """The anime version of the best face (or of each face asked for): a PNG, or JSON with it in base64 when the
    client asks for JSON (always, for every face)."""
    data, params = read_photo_request(TranslateParams, request, allow_raw_body=True)
    choice = params.face_choice()
    if choice == EVERY_FACE and params.format == "png":
        raise BadInput("faces=all answers JSON (one PNG holds one face): leave out format=png, or ask for face=<index>")
    as_json = choice == EVERY_FACE or _translation_as_json(params.format)
    result = pipeline().run(data, pins=params.pins(), search=False, client=client(), faces=choice)
    if as_json and params.asks_for_faces():
        response = jsonify(faces_answer(answers.FacesTranslateResult, result, with_crops=False).body())
        response.vary.add("Accept")
        return _timed(response, result.timings, result.arms)
    png = images.encode_png(result.anime)
    if as_json:
        anime = base64.b64encode(png).decode("ascii")
        answer = portrait_answer(answers.TranslateResult, result, with_images=False, anime_png_base64=anime)
        response = jsonify(answer.body())
    else:
        response = Response(png, mimetype="image/png")
        response.headers["X-Content-Type-Options"] = "nosniff"
    response.vary.add("Accept")  # one URL, two representations
    return _timed(response, result.timings, result.arms)


@bp.post("/detect")
@operation(
    "detect",
    "Every face in a photo",
    description="Faces above the detector threshold, best first; none is an empty list, not an error.",
    tags=("portrait",),
    query=DetectParams,
    body=PHOTO,
    answers={200: Answer("The faces found", answers.DetectResult, headers=(SERVER_TIMING,))},
    errors=PHOTO_ERRORS,
    needs_key=True,
    rate_limited=True,
    runs_models=True,
)
def detect() -> ResponseReturnValue:
    """Every face above the threshold, best first; a photo with no face is an empty list, not an error."""
    data, params = read_photo_request(DetectParams, request, allow_raw_body=True)
    photo, faces = pipeline().find_faces(data, params.pins(), client=client())
    answer = answers.DetectResult(
        faces=[answers.Face.of(face) for face in faces],
        image=answers.ImageSize.of(photo),
        timings_ms=timings_ms(photo.timings),
        arms=dict(photo.arms),
    )
    return _timed(jsonify(answer.body()), photo.timings, photo.arms)


@bp.get("/models")
@operation(
    "listModels",
    "The pipeline's servables, their versions, states and version labels",
    description="A servable the server does not know or cannot answer for carries its error.",
    tags=("models",),
    answers={200: Answer("One entry per servable", answers.ModelsResult)},
    errors=(400, 503),
    needs_key=True,
)
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
        own = dict(labels.get(name, {}))
        try:
            statuses = backend.model_status(name)
        except GatewayError as exc:
            entry = answers.Servable(name=name, labels=own, error=exc.to_dict()["error"])
        else:
            entry = answers.Servable(name=name, labels=own, versions=[_version(status, own) for status in statuses])
        servables.append(entry)
    answer = answers.ModelsResult(
        servables=servables,
        pipeline=_pipeline_report(backend),
        rollouts=rollouts.describe(look=True),
        # refused: why the newest serving_models.config is not in force (the previous one serves)
        model_config=None if state is None else answers.ModelConfigReport(refused=state.refused),
    )
    return jsonify(answer.body())


# merge_slashes=False: "//etc/passwd" is a 404 here, not a redirect to a name that looks relative.
@bp.get("/gallery/<path:name>.jpg", merge_slashes=False)
@operation(
    "galleryThumbnail",
    "The thumbnail of a gallery face",
    description="`name` is a match's `filename`, as the gallery index lists it.",
    tags=("models",),
    path_params=GalleryPath,
    query=GalleryParams,
    answers={200: Answer("A JPEG thumbnail", media_types=("image/jpeg",), headers=("Cache-Control",))},
    errors=(400, 404),
)  # no key: the browser page shows thumbnails without one
def gallery_thumbnail(name: str) -> ResponseReturnValue:
    """The thumbnail JPEG of a gallery face, found by the name the index lists (never a path built from it)."""
    version = read_params(GalleryParams, request).version
    response = send_file(thumbnails().path(name, version), mimetype="image/jpeg", conditional=True)
    response.headers["Cache-Control"] = _LATEST_CACHE if version is None else _PINNED_CACHE
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/openapi.json")
@operation(
    "openapi",
    "This document",
    tags=("operations",),
    answers={200: Answer("OpenAPI 3.0", media_types=("application/json",))},
    errors=(400,),
)  # no key: it says how to authenticate
def openapi_document() -> ResponseReturnValue:
    read_params(NoParams, request)
    # Built once per app: the settings it describes are frozen, and the document is open to anyone.
    document = current_app.extensions.get("openapi_document")
    if document is None:
        document = current_app.extensions.setdefault("openapi_document", openapi.document(current_app))
    return jsonify(document)


@bp.route("/<everything:rest>", methods=list(ANY_METHOD), provide_automatic_options=False)
@declare(needs_key=True)  # with keys set, an unknown API path does not tell a client without one that it is unknown
def unknown(rest: str) -> ResponseReturnValue:
    """Any other path under /api/v1: 405 where another method is answered, else 404 (as unmatched routes are)."""
    allowed = answered_elsewhere(ANY_METHOD)
    if allowed:
        raise http.MethodNotAllowed(valid_methods=sorted(allowed))
    raise http.NotFound()


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


def _version(status: VersionStatus, labels: Mapping[str, int]) -> answers.VersionStatus:
    return answers.VersionStatus(
        version=status.version,
        state=status.state,
        labels=sorted(label for label, version in labels.items() if version == status.version),
        error=None if status.error_code == "OK" else {"code": status.error_code, "message": status.error_message},
    )


def _pipeline_report(backend: Backend) -> answers.PipelineReport:
    """The pipeline file's wiring and, per stage, whether the servable's current version fits it."""
    config = serving().pipeline_config
    reports = check_pipeline(backend, config)
    stages = {}
    for name, stage in config.model_dump(mode="json").items():
        report = reports[name]
        stages[name] = answers.StageReport(
            **stage,
            fits=report.fits,
            misfits=[misfit.to_dict() for misfit in report.misfits],
            unchecked=report.unreachable or None,
        )
    # refused: the last good pipeline file serves
    return answers.PipelineReport(source=config.source, stages=stages, refused=serving().pipeline_file.refused)
