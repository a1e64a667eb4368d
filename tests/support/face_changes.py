"""Changes to a face picture (flip, turn, shift and scale, down to 24 px, grey, JPEG 30) and their exact geometry.

The encoder benchmark measures how often the same person is found after each change; the tests
check the geometry (where ``change`` puts each pixel) that the benchmark's exact framing relies on.
"""

from __future__ import annotations

import io

import numpy as np

# "combined": mirror + turn + shift/scale + JPEG 30; "moved" is the same without the JPEG step, "all" adds the
# 24 px shrink and grey.
CHANGES = ("flip", "rotate", "shift_scale", "down24", "grey", "jpeg30", "moved", "combined", "all")


def _turn(index: int) -> float:
    """Degrees of the turn for the ``index``-th face: left and right in turn."""
    return 15.0 if index % 2 == 0 else -15.0


def _shift(index: int) -> tuple[float, float, float]:
    """(dx, dy, scale) of the shift and scale for the ``index``-th face: dx, dy in picture widths/heights."""
    return (0.06, -0.04, 1.12) if index % 2 == 0 else (-0.06, 0.04, 0.88)


def mirror_matrix(width: int, height: int) -> np.ndarray:
    """3x3 map of picture pixel (x, y) to its place in the mirror image."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _turn_matrix(width: int, height: int, degrees: float) -> np.ndarray:
    """3x3 map of picture pixel (x, y) to its place after a turn about the picture's centre."""
    import cv2

    return np.vstack([cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, 1.0), [0, 0, 1]])


def _shift_matrix(width: int, height: int, dx: float, dy: float, scale: float) -> np.ndarray:
    """3x3 map of picture pixel (x, y) to its place after scaling about the centre and shifting."""
    return np.array(
        [
            [scale, 0, (1 - scale) * (width - 1) / 2 + dx * width],
            [0, scale, (1 - scale) * (height - 1) / 2 + dy * height],
            [0, 0, 1],
        ]
    )


def _warp(picture: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    import cv2

    height, width = picture.shape[:2]
    return cv2.warpAffine(picture, matrix[:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _rotate(picture: np.ndarray, degrees: float) -> np.ndarray:
    return _warp(picture, _turn_matrix(picture.shape[1], picture.shape[0], degrees))


def _shift_scale(picture: np.ndarray, dx: float, dy: float, scale: float) -> np.ndarray:
    return _warp(picture, _shift_matrix(picture.shape[1], picture.shape[0], dx, dy, scale))


def _down(picture: np.ndarray, face_width: float, target: int = 24) -> np.ndarray:
    """The picture shrunk so that the face is ``target`` pixels wide, then blown back up to its size."""
    from app.images import resize

    height, width = picture.shape[:2]
    factor = min(1.0, target / max(face_width, 1.0))
    small = resize(picture, (max(1, round(height * factor)), max(1, round(width * factor))))
    return np.asarray(_pil(small).resize((width, height), resample=3))  # bicubic back up


def _pil(picture: np.ndarray):
    from PIL import Image

    return Image.fromarray(picture)


def _grey(picture: np.ndarray) -> np.ndarray:
    luma = picture.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(luma + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _jpeg(picture: np.ndarray, quality: int = 30) -> np.ndarray:
    from PIL import Image

    buffer = io.BytesIO()
    _pil(picture).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def change(picture: np.ndarray, kind: str, index: int, face_width: float) -> np.ndarray:
    """``picture`` changed by ``kind``; ``index`` varies the direction (turn left or right, shift up or down)."""
    if kind == "flip":
        return np.ascontiguousarray(picture[:, ::-1])
    if kind == "rotate":
        return _rotate(picture, _turn(index))
    if kind == "shift_scale":
        return _shift_scale(picture, *_shift(index))
    if kind == "down24":
        return _down(picture, face_width)
    if kind == "grey":
        return _grey(picture)
    if kind == "jpeg30":
        return _jpeg(picture)
    if kind in ("moved", "combined", "all"):
        out = np.ascontiguousarray(picture[:, ::-1])
        out = _rotate(out, _turn(index))
        out = _shift_scale(out, *_shift(index))
        if kind == "moved":
            return out
        if kind == "all":
            out = _grey(_down(out, face_width))
        return _jpeg(out)
    raise ValueError(kind)


def change_geometry(kind: str, index: int, width: int, height: int) -> tuple[np.ndarray, bool]:
    """The 3x3 map of picture pixel (x, y) to where ``change`` puts it, and whether the change mirrors."""
    mirror = mirror_matrix(width, height)
    turn = _turn_matrix(width, height, _turn(index))
    shift = _shift_matrix(width, height, *_shift(index))
    if kind == "flip":
        return mirror, True
    if kind == "rotate":
        return turn, False
    if kind == "shift_scale":
        return shift, False
    if kind in ("moved", "combined", "all"):
        return shift @ turn @ mirror, True
    return np.eye(3), False
