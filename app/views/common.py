"""What the page and API views share: reading the upload, pinning servables, turning results into JSON."""

from __future__ import annotations

import base64
from collections.abc import Mapping

from flask import Request, current_app
from werkzeug.exceptions import RequestEntityTooLarge

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
    """
    try:
        content_type = request.mimetype or ""
        if content_type == "multipart/form-data":
            files = request.files.getlist(UPLOAD_FIELD)
            if not files:
                others = ", ".join(sorted(request.files)) or "none"
                raise BadInput(f"send the photo in the multipart field {UPLOAD_FIELD!r} (file fields sent: {others})")
            if len(files) > 1:
                raise BadInput(f"send one photo in {UPLOAD_FIELD!r}, not {len(files)}")
            data = files[0].read()
        elif allow_raw_body and content_type.startswith("image/"):
            data = request.get_data(cache=False)
        elif allow_raw_body:
            raise UnsupportedMediaType(
                f"send multipart/form-data with a {UPLOAD_FIELD!r} field, or a raw body of type "
                f"{images.accepted_types()}; got {content_type or 'no content type'}"
            )
        else:
            raise UnsupportedMediaType(
                f"send multipart/form-data with a {UPLOAD_FIELD!r} field; got {content_type or 'no content type'}"
            )
    except RequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"the request is larger than {settings().max_upload_bytes:,} bytes") from exc
    if not data:
        raise BadInput("the photo is empty")
    return data


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
