"""Images in and out: decoding and validating uploads and gallery files, face crops, encoding results."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType

# Pillow format name -> media type. Anything else is refused with 415.
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
DEFAULT_MAX_PIXELS = 50_000_000
FACE_CROP_SCALE = 1.75


def accepted_types() -> str:
    return ", ".join(ACCEPTED_FORMATS.values())


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode an upload into an RGB uint8 array [H, W, 3], upright per its EXIF orientation.

    ``draft_size`` lets a large JPEG decode at a reduced scale (never below that size)
    when the caller does not need every pixel. Raises 415 for formats other than
    JPEG, PNG, WebP and BMP, 413 above ``max_pixels`` or for decompression bombs,
    400 for empty or corrupt data.
    """
    if not data:
        raise BadInput("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
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
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", draft_size)
            image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(f"the image is too large to decode safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaType(f"not a readable image; send one of: {accepted_types()}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"the image could not be decoded: {exc}") from exc


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
    """Resize an RGB uint8 array to (height, width) with a good downscaling filter."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0))


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
