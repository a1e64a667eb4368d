"""What the page and API views share: reading the upload and its parameters, turning results into JSON."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from flask import Request, current_app, url_for
from flask import request as current_request
from markupsafe import Markup
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from app import images
from app.config import Settings
from app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from app.pipeline import Match, Pipeline, PortraitResult
from app.views import answers
from app.views.params import Params, read_params
from app.web.alarms import Alarms
from app.web.extensions import serving
from app.web.security import client_identity

UPLOAD_FIELD = "image_file"
# What a run of the pipeline on a photo can answer besides 200 (and 422, no face, where it needs one).
PHOTO_ERRORS = (400, 404, 408, 413, 415, 502, 503, 504)
SERVER_TIMING = "Server-Timing"
THUMBNAIL_URLS = 10_000  # thumbnail URLs an app remembers (each is built once: see thumbnail_url)
_THUMBNAIL_URL_TABLE = "thumbnail_urls"
_ALARMS = "alarms"
P = TypeVar("P", bound=Params)
A = TypeVar("A", bound=answers.PortraitResult)
F = TypeVar("F", answers.FacesSearchResult, answers.FacesTranslateResult)


def settings() -> Settings:
    return current_app.config["GATEWAY_SETTINGS"]


def pipeline() -> Pipeline:
    return serving().pipeline


def read_photo_request(model: type[P], request: Request, *, allow_raw_body: bool = False) -> tuple[bytes, P]:
    """The photo and the endpoint's parameters, from the query string and the multipart form fields alike.

    The query string is checked first, so a bad parameter there is refused before the body is read.
    """
    read_params(model, request, form=False)
    data = read_upload(request, allow_raw_body=allow_raw_body)
    return data, read_params(model, request, ignore=(UPLOAD_FIELD,))


def k_of(params: Params) -> int:
    """The k a request asks for, or the configured default."""
    k = getattr(params, "k", None)
    return settings().default_k if k is None else k


def read_upload(request: Request, *, allow_raw_body: bool = False) -> bytes:
    """The image bytes of a request: multipart field ``image_file`` (exactly one file), or a raw image body.

    The client's file name is never used for anything but messages; nothing is written to disk.
    A body that has not arrived within ``upload_timeout`` seconds is cut off with 408.
    """
    with upload_deadline(request):
        try:
            data = _read_photo(request, allow_raw_body)
        except RequestEntityTooLarge as exc:
            raise PayloadTooLarge(f"the request is larger than {settings().max_upload_bytes:,} bytes") from exc
    if not data:
        raise BadInput("the photo is empty")
    return data


def _read_photo(request: Request, allow_raw_body: bool) -> bytes:
    content_type = request.mimetype or ""
    if content_type == "multipart/form-data":
        files = request.files.getlist(UPLOAD_FIELD)
        if not request.files and not request.form and request.content_length:
            # Werkzeug drops a body it cannot parse without a word; say so rather than "no file".
            raise BadInput(
                "the multipart body could not be read: check its boundary, and that its part headers "
                "(field and file names) are UTF-8"
            )
        if not files:
            others = ", ".join(sorted(request.files)) or "none"
            raise BadInput(
                f"send the photo in the multipart field {UPLOAD_FIELD!r} (file fields sent: {_clip(others, 80)})"
            )
        if len(files) > 1:
            raise BadInput(f"send one photo in {UPLOAD_FIELD!r}, not {len(files)}")
        return files[0].read()
    if allow_raw_body and content_type.startswith("image/"):
        return request.get_data(cache=False)
    if allow_raw_body:
        raise UnsupportedMediaType(
            f"send multipart/form-data with a {UPLOAD_FIELD!r} field, or a raw body of type "
            f"{images.accepted_types()}; got {_clip(content_type or 'no content type', 80)}"
        )
    raise UnsupportedMediaType(
        f"send multipart/form-data with a {UPLOAD_FIELD!r} field; got {_clip(content_type or 'no content type', 80)}"
    )


@contextlib.contextmanager
def upload_deadline(request: Request) -> Iterator[None]:
    """Cut off a request body still arriving after ``upload_timeout`` seconds: 408.

    A client that trickles its body (a "slow POST") would otherwise hold a server thread
    for as long as it likes, since gunicorn reads a body with no deadline. Shutting the
    reading side of the client's socket (which gunicorn puts in the WSGI environ) wakes
    the blocked read, which then finds the body cut short. Other servers: no deadline.
    """
    client = request.environ.get("gunicorn.socket")
    seconds = settings().upload_timeout
    if client is None or not seconds:
        yield
        return
    expired = threading.Event()

    def cut_off() -> None:
        expired.set()
        with contextlib.suppress(OSError):  # the client may be gone already
            client.shutdown(socket.SHUT_RD)

    timer = alarms().after(seconds, cut_off)
    try:
        yield
    except Exception as exc:
        if expired.is_set():
            raise RequestTimeout(f"the request body did not arrive within {seconds:g} seconds") from exc
        raise
    finally:
        timer.cancel()
    if expired.is_set():  # the body ended early, but the parser took it quietly
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} seconds")


def alarms() -> Alarms:
    """The app's alarms (one watcher thread per worker for every request's deadline)."""
    found = current_app.extensions.get(_ALARMS)
    if found is None:
        found = current_app.extensions.setdefault(_ALARMS, Alarms("upload-deadlines"))
    return found


def _clip(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis: client-given names can be any length."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def server_timing(timings: Mapping[str, float], arms: Mapping[str, str] | None = None) -> str:
    """A Server-Timing header value: each stage's duration in milliseconds, and as its description the
    rollout arm that served it (``search;dur=4.1;desc="canary"``)."""
    arms = arms or {}
    return ", ".join(
        f"{stage};dur={seconds * 1000:.1f}" + (f';desc="{arms[stage]}"' if stage in arms else "")
        for stage, seconds in timings.items()
    )


def client() -> str:
    """Who is asking, as the rate limit counts it (a valid API key, else the address): keeps a rollout sticky."""
    return client_identity()


def timings_ms(timings: Mapping[str, float]) -> dict[str, float]:
    """Stage durations for a JSON body, in milliseconds."""
    return {stage: round(seconds * 1000, 2) for stage, seconds in timings.items()}


def data_url(media_type: str, content: bytes) -> Markup:
    """A data: URL for a page, marked safe: base64 and a media type hold no character HTML escapes, and escaping
    (scanning) a photo's few hundred kilobytes again costs a page a millisecond."""
    return Markup(f"data:{media_type};base64,{base64.b64encode(content).decode('ascii')}")


def portrait_answer(model: type[A], result: PortraitResult, *, with_images: bool, **extra: Any) -> A:
    """A pipeline result as ``model`` (a search's, a translation's ...); the face crop and anime image as base64
    JPEG/PNG when asked for."""
    fields: dict[str, Any] = {
        "face": answers.Face.of(result.face),
        "faces": [answers.Face.of(face) for face in result.faces],
        "image": answers.ImageSize.of(result.photo),
        "timings_ms": timings_ms(result.timings),
        "arms": dict(result.arms),
    }
    if result.matches is not None:
        version = result.versions.get("search")
        fields["matches"] = matches_answer(result.matches, version)
        fields["gallery_version"] = version
        if result.missing_shards:  # a partial answer: these shards of the gallery did not answer
            fields["missing_shards"] = list(result.missing_shards)
    if with_images:
        fields["crop_jpeg_base64"] = base64.b64encode(images.encode_jpeg(result.crop)).decode("ascii")
        if result.anime is not None:
            fields["anime_png_base64"] = base64.b64encode(images.encode_png(result.anime)).decode("ascii")
    return model(**fields, **extra)


def faces_answer(model: type[F], result: PortraitResult, *, with_crops: bool) -> F:
    """A run over the faces a request chose (``faces=all``, ``face=<index>``) as ``model``: one entry of ``results``
    per face, in ``faces`` order, with its matches and anime image where the run made them, and its crop as base64
    JPEG when asked for."""
    version = result.versions.get("search")
    results = []
    for face in result.per_face:
        entry: dict[str, Any] = {"face": face.index}
        if face.matches is not None:
            entry["matches"] = matches_answer(face.matches, version)
        if with_crops:
            entry["crop_jpeg_base64"] = base64.b64encode(images.encode_jpeg(face.crop)).decode("ascii")
        if face.anime is not None:
            entry["anime_png_base64"] = base64.b64encode(images.encode_png(face.anime)).decode("ascii")
        results.append(entry)
    fields: dict[str, Any] = {
        "faces": [answers.Face.of(face) for face in result.faces],
        "image": answers.ImageSize.of(result.photo),
        "results": results,
        "timings_ms": timings_ms(result.timings),
        "arms": dict(result.arms),
    }
    if result.matches is not None:
        fields["gallery_version"] = version
        if result.missing_shards:
            fields["missing_shards"] = list(result.missing_shards)
    return model(**fields)


def thumbnail_url(match: Match, gallery_version: int | None) -> str:
    """Where a match's thumbnail is served: by the name the gallery index lists, in the version that answered.

    Each URL is built once per app (url_for takes a tenth of a millisecond, and an answer about every face of a
    photo lists dozens of matches), in a table that starts over when it holds ``THUMBNAIL_URLS`` of them.
    """
    known = current_app.extensions.setdefault(_THUMBNAIL_URL_TABLE, {})
    key = (current_request.script_root, match.filename, gallery_version)
    url = known.get(key)
    if url is None:
        if len(known) >= THUMBNAIL_URLS:
            known.clear()
        url = known[key] = url_for("api.gallery_thumbnail", name=match.filename, version=gallery_version)
    return url


def matches_answer(matches: list[Match], gallery_version: int | None) -> list[answers.Match]:
    """Matches for a JSON body, each with the URL of its thumbnail."""
    return [
        answers.Match(
            index=match.index,
            filename=match.filename,
            distance=match.distance,
            thumbnail_url=thumbnail_url(match, gallery_version),
        )
        for match in matches
    ]
