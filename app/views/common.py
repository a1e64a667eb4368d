"""What the page and API views share: reading the upload, pinning servables, turning results into JSON."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping

from flask import Request, current_app
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

from app import images
from app.config import Settings
from app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from app.extensions import serving
from app.pipeline import MAX_K, Pins, Pipeline, PortraitResult, parse_pins

UPLOAD_FIELD = "image_file"


def settings() -> Settings:
    return current_app.config["GATEWAY_SETTINGS"]


def pipeline() -> Pipeline:
    return serving().pipeline


def read_upload(request: Request, *, allow_raw_body: bool = False) -> bytes:
    """The image bytes of a request: multipart field ``image_file`` (exactly one file), or a raw image body.

    The client's file name is never used for anything but messages; nothing is written to disk.
    A body that has not arrived within ``upload_timeout`` seconds is cut off with 408.
    """
    with _upload_deadline(request):
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
def _upload_deadline(request: Request) -> Iterator[None]:
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

    timer = threading.Timer(seconds, cut_off)
    timer.daemon = True
    timer.start()
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


def _clip(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with an ellipsis: client-given names can be any length."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_k(args: Mapping[str, str]) -> int:
    raw = args.get("k")
    if raw is None:
        return settings().default_k
    raw = raw.strip()
    # isascii: "²".isdigit() is true but int("²") fails
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 4 or not 1 <= int(raw) <= MAX_K:
        raise BadInput(f"k must be an integer between 1 and {MAX_K}, got {raw[:20]!r}")
    return int(raw)


def read_pins(args: Mapping[str, str]) -> Pins:
    return parse_pins(args)


def server_timing(timings: Mapping[str, float]) -> str:
    """A Server-Timing header value: each stage's duration in milliseconds."""
    return ", ".join(f"{stage};dur={seconds * 1000:.1f}" for stage, seconds in timings.items())


def timings_ms(timings: Mapping[str, float]) -> dict[str, float]:
    """Stage durations for a JSON body, in milliseconds."""
    return {stage: round(seconds * 1000, 2) for stage, seconds in timings.items()}


def data_url(media_type: str, content: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(content).decode('ascii')}"


def result_json(result: PortraitResult, *, with_images: bool) -> dict:
    """The JSON body of a pipeline result; images as base64 PNG/JPEG when asked for."""
    body: dict = {
        "face": result.face.to_dict(),
        "faces": [face.to_dict() for face in result.faces],
        "image": {"width": result.photo.original_size[0], "height": result.photo.original_size[1]},
        "timings_ms": timings_ms(result.timings),
    }
    if result.matches is not None:
        body["matches"] = [match.to_dict() for match in result.matches]
        body["gallery_version"] = result.versions.get("search")
    if with_images:
        body["crop_jpeg_base64"] = base64.b64encode(images.encode_jpeg(result.crop)).decode("ascii")
        if result.anime is not None:
            body["anime_png_base64"] = base64.b64encode(images.encode_png(result.anime)).decode("ascii")
    return body
