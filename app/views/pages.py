"""Browser pages: the upload form at / and POST /detect_face/image, which answers with the result page or JSON."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flask import Blueprint, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from app import images
from app.pipeline import EVERY_FACE, MAX_K, Face, FaceResult, PortraitResult
from app.rollout import DEFAULT_ARM
from app.views import answers, common
from app.views.params import PageParams
from app.web.errors import wants_json
from app.web.operations import declare

bp = Blueprint("pages", __name__)

# The timings table lists the stages in pipeline order, whichever concurrent branch finished first.
_STAGE_ORDER = {stage: position for position, stage in enumerate(("decode", "detect", "crop", "encode", "search",
                                                                  "translate"))}  # fmt: skip
# Long side of the photo shown on the result page, and of the face crop beside it.
PHOTO_MAX_SIDE = 800
CROP_MAX_SIDE = 320


@dataclass(frozen=True)
class FaceBox:
    """A face box as SVG percentages of the photo: x, y, width, height in 0..100."""

    x: float
    y: float
    width: float
    height: float
    score: float

    @classmethod
    def of(cls, face: Face) -> FaceBox:
        ymin, xmin, ymax, xmax = (min(max(v, 0.0), 1.0) * 100 for v in face.box)
        return cls(round(xmin, 3), round(ymin, 3), round(xmax - xmin, 3), round(ymax - ymin, 3), face.score)


@bp.app_context_processor
def upload_form_defaults() -> dict:
    """Every page (the error page too, rendered by the app's error handler) can show the upload form."""
    return {"upload_form": upload_form_context()}


# The pages are for browsers: declared for what guards them, not in the API's OpenAPI document.
@bp.get("/")
@declare()
def index() -> str:
    return render_template("index.html")


@bp.post("/detect_face/image")
@declare(rate_limited=True, runs_models=True)  # no key: the browser page has none to send
def detect_face() -> ResponseReturnValue:
    """Run the pipeline on one uploaded photo: the result page, or JSON for ``Accept: application/json``."""
    data, params = common.read_photo_request(PageParams, request)
    k = common.k_of(params)
    choice = params.face_choice()
    as_json = wants_json()
    # The page's photo and face images are encoded while the translation runs (shown_images needs no request).
    meanwhile = None if as_json else shown_images
    result = common.pipeline().run(
        data,
        k=k,
        pins=params.pins(),
        meanwhile=meanwhile,
        client=common.client(),
        faces=choice,
        photo_side=PHOTO_MAX_SIDE,
    )
    headers = {"Server-Timing": common.server_timing(page_timings(result), result.arms)}
    if as_json:
        if params.asks_for_faces():
            answer = common.faces_answer(answers.FacesSearchResult, result, with_crops=True)
        else:
            answer = common.portrait_answer(answers.SearchResult, result, with_images=True)
        return jsonify(answer.body()), 200, headers
    form = upload_form_context(k, every_face=choice == EVERY_FACE)
    page = render_template("result.html", upload_form=form, **result_context(result))
    return page, 200, headers


def page_timings(result: PortraitResult) -> dict[str, float]:
    """The stages' durations, then each model call's own (``model-<stage>``), so a client can tell the
    model time from the gateway's."""
    return {**result.timings, **{f"model-{stage}": seconds for stage, seconds in result.model_timings.items()}}


def upload_form_context(k: int | None = None, *, every_face: bool = True) -> dict:
    """What templates/_upload_form.html needs: accepted types, size limit, the k to prefill, and whether to ask
    about every face (the form's default: a group photo's faces can then be chosen on the result page)."""
    settings = common.settings()
    return {
        "accepted_types": images.accepted_types().replace(" ", ""),
        "max_upload_mb": settings.max_upload_bytes / (1024 * 1024),
        "k": k or settings.default_k,
        "max_k": MAX_K,
        "every_face": every_face,
        "max_faces": settings.max_faces,
    }


def shown_images(result: PortraitResult) -> dict:
    """The photo and each face's crop as the page shows them: scaled down, as JPEG data: URLs."""
    photo = _fit(result.photo.pixels, PHOTO_MAX_SIDE)
    crops = result.per_face or [FaceResult(0, result.face, result.crop)]
    return {
        "photo_url": common.data_url("image/jpeg", images.encode_jpeg(photo)),
        "photo_shown_size": (photo.shape[1], photo.shape[0]),
        "crop_urls": [common.data_url("image/jpeg", images.encode_jpeg(_fit(f.crop, CROP_MAX_SIDE))) for f in crops],
    }


def result_context(result: PortraitResult) -> dict:
    """The result page's images as data: URLs (nothing is written to disk) and its numbers, ready to show.

    ``face_results`` has an entry per face the run answered for (its box, crop, anime image and matches); with
    more than one, each face's outline on the photo links to its entry (``#face-<index>``).
    """
    version = result.versions.get("search")
    total = result.timings.get("total") or sum(result.timings.values()) or 1.0
    shown = result.meanwhile or shown_images(result)
    per_face = result.per_face or [
        FaceResult(0, result.face, result.crop, matches=result.matches, anime=result.anime)
    ]  # a result made without per-face entries (one face)
    answered = {face.index for face in per_face}
    face_results = [
        {
            "index": face.index,
            "number": face.index + 1,
            "box": FaceBox.of(face.face),
            "crop_url": crop_url,
            "anime_url": None if face.anime is None else common.data_url("image/png", images.encode_png(face.anime)),
            "anime_size": None if face.anime is None else (face.anime.shape[1], face.anime.shape[0]),
            "matches": [(match, common.thumbnail_url(match, version)) for match in face.matches or []],
        }
        for face, crop_url in zip(per_face, shown["crop_urls"], strict=True)
    ]
    return {
        **shown,
        "photo_size": result.photo.original_size,
        "face_count": len(result.faces),
        "face_results": face_results,
        "several": len(face_results) > 1,
        "other_faces": [FaceBox.of(face) for i, face in enumerate(result.faces) if i not in answered],
        "searched": result.matches is not None,
        "gallery_version": version,
        "reading": common.serving().pipeline_config.search.reading,
        # Only what did not come from a stage's default: a rollout's arm, or the request's own pin.
        "arms": [(stage, arm) for stage, arm in result.arms.items() if arm != DEFAULT_ARM],
        "timings": [
            (stage, seconds * 1000, seconds / total)
            for stage, seconds in sorted(result.timings.items(), key=lambda item: _STAGE_ORDER.get(item[0], 99))
            if stage != "total"
        ],
        "total_ms": result.timings.get("total", 0.0) * 1000,
    }


def _fit(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """The pixels scaled down (never up) so that the long side is at most ``max_side``."""
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels
    return images.resize(pixels, (max(1, round(height * scale)), max(1, round(width * scale))))
