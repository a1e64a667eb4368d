"""Upload decoding and validation, face crops, model inputs and outputs."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from app import images
from app.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from app.serving.base import TensorSpec


def _encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


_COLUMNS, _ROWS = np.meshgrid(np.arange(60), np.arange(40), indexing="xy")
GRADIENT = (np.stack([_COLUMNS, _ROWS, np.zeros_like(_ROWS)], -1) * 4).astype(np.uint8)  # 40 rows x 60 columns


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_accepted_formats_decode_to_rgb(fmt):
    pixels = images.decode_image(_encode(GRADIENT, fmt))
    assert pixels.shape == (40, 60, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "ICO"])
def test_other_formats_are_415(fmt):
    with pytest.raises(UnsupportedMediaType, match="image/jpeg"):
        images.decode_image(_encode(GRADIENT, fmt))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadInput),
        (b"hello, not an image", UnsupportedMediaType),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", UnsupportedMediaType),
        (_encode(GRADIENT, "JPEG")[:200], BadInput),
    ],
    ids=["empty", "text", "svg", "truncated-jpeg"],
)
def test_bad_data(data, error):
    with pytest.raises(error):
        images.decode_image(data)


def test_pixel_limit_is_413():
    with pytest.raises(PayloadTooLarge, match="megapixels"):
        images.decode_image(_encode(GRADIENT, "PNG"), max_pixels=100)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels in a few dozen bytes (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_413():
    with pytest.raises(PayloadTooLarge, match="megapixels"):
        images.decode_image(_png_header_only(8_000, 8_000))  # 64 MP: over the gateway's own 50 MP limit
    with pytest.raises(PayloadTooLarge, match="too large to decode safely"):
        # 400 MP: Pillow's bomb guard refuses it on open, whatever the gateway's limit
        images.decode_image(_png_header_only(20_000, 20_000), max_pixels=10**9)


def test_exif_orientation_is_applied():
    image = Image.fromarray(GRADIENT)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    pixels, size = images.decode_photo(buffer.getvalue())
    assert pixels.shape == (60, 40, 3)
    assert size == (40, 60)


def test_large_jpeg_decodes_at_reduced_scale_but_reports_full_size():
    big = np.asarray(Image.fromarray(GRADIENT).resize((4000, 3000)))
    pixels, size = images.decode_photo(_encode(big, "JPEG"), min_side=1024)
    assert size == (4000, 3000)
    assert 1024 <= max(pixels.shape[:2]) < 4000
    assert images.decode_image(_encode(big, "JPEG")).shape == (3000, 4000, 3)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((0.4, 0.4, 0.6, 0.6), (32, 32, 67, 67)),  # 20 px box -> 35 px square, centred
        ((0.0, 0.0, 0.2, 0.2), (0, 0, 35, 35)),  # shifted inside at the corner
        ((0.0, 0.0, 1.0, 1.0), (0, 0, 100, 100)),  # shrunk to the image
    ],
)
def test_face_square(box, expected):
    assert images.face_square(box, 100, 100, scale=1.75) == expected


def test_face_square_on_a_wide_image_stays_square_and_inside():
    top, left, bottom, right = images.face_square((0.1, 0.45, 0.9, 0.55), 100, 400, scale=1.75)
    assert bottom - top == right - left == 100
    assert left >= 0 and right <= 400


def test_model_input_and_output_ranges():
    spec = TensorSpec("x", np.dtype(np.float32), (1, 8, 8, 3))
    batch = images.model_input([np.full((20, 20, 3), 255, np.uint8)], spec, (-1.0, 1.0))
    assert batch.shape == (1, 8, 8, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, 1.0)
    back = images.model_output_image(np.array([[[-1.0, 0.0, 1.0]]], np.float32), (-1.0, 1.0))
    assert back.tolist() == [[[0, 128, 255]]]
    uint8_spec = TensorSpec("x", np.dtype(np.uint8), (None, 4, 4, 3))
    assert images.model_input([GRADIENT], uint8_spec, (0, 255)).dtype == np.uint8


def test_model_input_needs_a_fixed_size():
    with pytest.raises(ValueError, match="known"):
        images.model_input([GRADIENT], TensorSpec("x", np.dtype(np.uint8), (1, None, None, 3)), (0, 255))


def _pillow_decode(data: bytes, scale: int = 1) -> np.ndarray:
    """What Pillow alone makes of a JPEG: the gateway's decoding before libjpeg-turbo was asked directly."""
    image = Image.open(io.BytesIO(data))
    if scale > 1:
        image.draft("RGB", (image.size[0] // scale, image.size[1] // scale))
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("min_side", "scale"), [(None, 1), (200, 2)])
def test_jpeg_decodes_as_pillow_does_in_every_orientation(orientation, min_side, scale):
    photo = np.asarray(Image.fromarray(GRADIENT).resize((400, 240)))
    photo = photo.copy()
    photo[:40, :60] = (250, 20, 20)  # a red corner: any wrong flip or turn moves it
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=95, exif=exif)
    pixels, size = images.decode_photo(buffer.getvalue(), min_side=min_side)
    expected = _pillow_decode(buffer.getvalue(), scale)
    assert pixels.shape == expected.shape
    assert np.array_equal(pixels, expected)
    assert size == ((240, 400) if orientation >= 5 else (400, 240))
    assert pixels.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize(
    ("size", "min_side", "decoded"),
    [((4000, 3000), 640, (750, 1000)), ((1000, 1000), 640, (1000, 1000)), ((1300, 1300), 640, (650, 650)),
     ((6000, 900), 640, (113, 750))],
)  # fmt: skip
def test_jpeg_scale_keeps_the_long_side_at_least_min_side(size, min_side, decoded):
    buffer = io.BytesIO()
    Image.fromarray(GRADIENT).resize(size).save(buffer, format="JPEG")
    pixels, original = images.decode_photo(buffer.getvalue(), min_side=min_side)
    assert original == size
    assert pixels.shape[:2] == decoded


@pytest.mark.parametrize(("fill", "outcome"), [(b"\xff", "broken data stream"), (b"\x00", None)])
def test_a_damaged_jpeg_fares_as_pillow_decides(fill, outcome):
    """libjpeg's complaints send a JPEG to Pillow: it refuses what it always refused and takes what it took."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(GRADIENT).resize((600, 600)))).save(buffer, format="JPEG", quality=92)
    damaged = bytearray(buffer.getvalue())
    middle = len(damaged) // 2
    damaged[middle : middle + 200] = fill * 200
    if outcome is None:
        assert images.decode_photo(bytes(damaged))[0].shape == (600, 600, 3)
    else:
        with pytest.raises(BadInput, match=outcome):
            images.decode_photo(bytes(damaged))
