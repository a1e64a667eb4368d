"""Images in and out: decoding and validating uploads and gallery files, face crops, encoding results."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Sequence

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from app.serving.base import TensorSpec

# Pillow format name -> media type. Anything else is refused with 415.
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
DEFAULT_MAX_PIXELS = 50_000_000
FACE_CROP_SCALE = 1.75
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 degrees: width and height swap
# The first bytes of the accepted formats that cannot be mistaken for text: such a file that Pillow
# cannot open is a damaged photo (400), not a file of another kind (415).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = {_PNG_SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG"}


def accepted_types() -> str:
    return ", ".join(ACCEPTED_FORMATS.values())


def decode_photo(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an upload into RGB uint8 pixels [H, W, 3], upright per its EXIF orientation.

    Returns the pixels and the photo's full upright size (width, height). With ``min_side`` a
    large JPEG is decoded at a reduced scale, 1/2, 1/4 or 1/8 (the scales its DCT gives for less
    work, not more), the smallest whose long side is still at least ``min_side``, for stages that
    do not need every pixel; the pixels are then smaller than the size.
    Raises 415 for formats other than JPEG, PNG, WebP and BMP, 413 above ``max_pixels``
    or for decompression bombs, 400 for empty or corrupt data.
    """
    if not data:
        raise BadInput("the image is empty")
    if data.startswith(_PNG_SIGNATURE):
        _check_png(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.format not in ACCEPTED_FORMATS:
                raise UnsupportedMediaType(
                    f"{image.format or 'this'} images are not accepted; send one of: {accepted_types()}"
                )
            width, height = image.size
            if width < 1 or height < 1:
                raise BadInput("the image has no pixels")
            if width * height > max_pixels:
                raise PayloadTooLarge(
                    f"the image has {width}x{height} pixels; the limit is {max_pixels / 1e6:g} megapixels"
                )
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            scale = _jpeg_scale(max(width, height), min_side) if image.format == "JPEG" else 1
            upright = (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)
            if image.format == "JPEG" and image.mode == "RGB":
                pixels = _decode_jpeg(data, image.size, scale, orientation)
                if pixels is not None:
                    return pixels, upright
            if scale > 1:  # Pillow picks the largest scale by which both sides divide (rounding down) to the request
                image.draft("RGB", (width // scale, height // scale))
            ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright photo
            if image.mode.startswith("I"):  # 16-bit greyscale PNG: convert("RGB") would clip it to white
                image = Image.fromarray((np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8))
            return np.asarray(image if image.mode == "RGB" else image.convert("RGB")), upright
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        damaged = next((name for magic, name in _SIGNATURES.items() if data.startswith(magic)), None)
        if damaged is not None:
            raise BadInput(f"the {damaged} image is damaged and could not be decoded") from exc
        raise UnsupportedMediaType(f"not a readable image; send one of: {accepted_types()}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"the image could not be decoded: {exc}") from exc


def _jpeg_scale(long_side: int, min_side: int | None) -> int:
    """The largest of 1, 2, 4, 8 that divides ``long_side`` (rounding up, as libjpeg does) to ``min_side`` or more."""
    scale = 1
    while min_side and scale < 8 and -(-long_side // (scale * 2)) >= min_side:
        scale *= 2
    return scale


def _decode_jpeg(data: bytes, size: tuple[int, int], scale: int, orientation: int) -> np.ndarray | None:
    """A colour JPEG decoded by libjpeg-turbo straight into an array at 1/``scale`` (Pillow's decoder would need a
    copy out of its own image), upright; None when libjpeg reports anything at all, even a warning, so that
    Pillow decodes it instead and says what is wrong, as it always has (simplejpeg's strict mode)."""
    width, height = size
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=-(-width // scale), min_height=-(-height // scale), strict=True
        )
    except ValueError:
        return None
    transpose = _ORIENTATIONS.get(orientation)
    return pixels if transpose is None else np.ascontiguousarray(transpose(pixels))


# EXIF orientation -> what makes the stored pixels upright (as ImageOps.exif_transpose turns them).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _check_png(data: bytes) -> None:
    """Refuse a damaged PNG with a message that says how: Pillow skips the checksums of the pixel data,
    and calls a PNG it cannot open (a bad header checksum, zero width) "unidentified"."""
    view, position = memoryview(data), len(_PNG_SIGNATURE)
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 12 + length
        if end > len(data):
            return  # cut short: Pillow's decoder says so
        if zlib.crc32(view[position + 4 : end - 4]) != struct.unpack_from(">I", data, end - 4)[0]:
            raise BadInput(f"the PNG image is damaged: bad checksum in its {kind.decode('latin-1')!r} chunk")
        if kind == b"IHDR" and length >= 8:
            width, height = struct.unpack_from(">II", data, position + 8)
            if width == 0 or height == 0:
                raise BadInput(f"the image has no pixels: its PNG header says {width}x{height}")
        if kind == b"IEND":
            return
        position = end


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an upload at full resolution into RGB uint8 pixels [H, W, 3], upright (see decode_photo)."""
    return decode_photo(data, max_pixels=max_pixels)[0]


def face_square(
    box: Sequence[float], height: int, width: int, scale: float = FACE_CROP_SCALE
) -> tuple[int, int, int, int]:
    """Pixel bounds (top, left, bottom, right) of a square around a normalised face box, inside the image.

    The square's side is ``scale`` times the box's longer side, centred on the box; it is
    shifted to stay inside the image and shrunk only if the image is too small for it.
    """
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    centre_y, centre_x = (ymin + ymax) / 2 * height, (xmin + xmax) / 2 * width
    side = max((ymax - ymin) * height, (xmax - xmin) * width) * scale
    side = round(min(max(side, 1.0), height, width))
    top = round(centre_y - side / 2)
    left = round(centre_x - side / 2)
    top = min(max(top, 0), height - side)
    left = min(max(left, 0), width - side)
    return top, left, top + side, left + side


def crop_face(image: np.ndarray, box: Sequence[float], scale: float = FACE_CROP_SCALE) -> np.ndarray:
    """The square face crop of ``image`` [H, W, C] around a normalised (ymin, xmin, ymax, xmax) box."""
    top, left, bottom, right = face_square(box, image.shape[0], image.shape[1], scale)
    return image[top:bottom, left:right]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB uint8 array to (height, width) with a good downscaling filter.

    As Pillow's ``reducing_gap``: first average whole blocks of pixels (no aliasing), then
    bilinear for what is left (less than 2x); OpenCV's SIMD paths make it several times faster.
    """
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    step_y, step_x = max(1, image.shape[0] // height), max(1, image.shape[1] // width)
    if step_y > 1 or step_x > 1:
        # Whole blocks only (a sliver of under ``step`` pixels at the edge is dropped): OpenCV's fast path.
        block = image[: image.shape[0] // step_y * step_y, : image.shape[1] // step_x * step_x]
        image = cv2.resize(block, (block.shape[1] // step_x, block.shape[0] // step_y), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)  # optimize=True: 2x the time for 1% less
    return out.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=False, compress_level=1)  # 6: 2x the time, 6% less
    return out.getvalue()


def image_size_of(spec: TensorSpec, size: Sequence[int] | None = None) -> tuple[int, int]:
    """(height, width) an image input wants: the spec's fixed size, else ``size`` (from the pipeline file)."""
    shape = spec.shape
    if shape is not None and len(shape) == 4 and shape[1] is not None and shape[2] is not None:
        return int(shape[1]), int(shape[2])
    if size is not None:
        return int(size[0]), int(size[1])
    raise ValueError(f"input {spec.name!r} must have a known [batch, height, width, channels] shape")


def model_input(
    images: Sequence[np.ndarray],
    spec: TensorSpec,
    value_range: tuple[float, float] = (0.0, 255.0),
    *,
    channels: str = "RGB",
    size: Sequence[int] | None = None,
    keep_size: bool = False,
) -> np.ndarray:
    """A batch for an image input [N, H, W, 3]: resized, in its channel order, dtype and value range.

    The size is the spec's own when it fixes one, else ``size``; with ``keep_size`` (a detector
    that takes any size) a single image goes as it is when neither fixes one. uint8 inputs get
    the pixels; float inputs get 0..255 mapped onto ``value_range``.
    """
    if keep_size and len(images) == 1 and not _fixed(spec) and size is None:
        batch = np.asarray(images[0])[np.newaxis]
    else:
        batch = np.stack([resize(image, image_size_of(spec, size)) for image in images])
    if channels == "BGR":
        batch = batch[..., ::-1]
    if spec.dtype == np.uint8:
        return np.ascontiguousarray(batch)
    low, high = value_range
    return (batch.astype(np.float32) * ((high - low) / 255.0) + low).astype(spec.dtype)


def _fixed(spec: TensorSpec) -> bool:
    shape = spec.shape
    return shape is not None and len(shape) == 4 and shape[1] is not None and shape[2] is not None


def model_output_image(
    values: np.ndarray, value_range: tuple[float, float] = (0.0, 255.0), *, channels: str = "RGB"
) -> np.ndarray:
    """An image output [H, W, 3] (float in value_range, or uint8) as RGB uint8 pixels."""
    values = np.asarray(values)
    if channels == "BGR":
        values = values[..., ::-1]
    if values.dtype == np.uint8:
        return np.ascontiguousarray(values)
    low, high = value_range
    pixels = (values.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
