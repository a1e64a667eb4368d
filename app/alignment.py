"""Face chips for the encoder: eye-levelled and framed the way dlib frames faces for its recognition network.

dlib's face recognition ResNet was trained on 150x150 chips cut by
``get_face_chip_details(shape, size=150, padding=0.25)`` + ``extract_image_chip``:
a similarity transform (scale, rotation, shift; no shear) that puts the face's
landmarks on a mean face shape defined in a unit square, padded by 25 % of the
square on every side. This module cuts the same chips from a detector's six
BlazeFace keypoints, fitted by least squares on the eyes and the mouth (the
nose tip sticks out of the face's plane and moves with the head's pose):

    chip = aligned_face_chip(pixels, keypoints)   # uint8 [150, 150, 3]

``keypoints`` is ``[6, 2]`` as (y, x), normalised to the photo (0 = top/left
edge, 1 = bottom/right edge), in BlazeFace's order: the subject's right eye
(on the image's left), left eye, nose tip, mouth centre, right ear tragion,
left ear tragion. Only the first four are read.

Pre-cropped faces (``build-index --whole-image``) have no keypoints:
``whole_image_chip`` frames the whole picture as a face box the way a detected
box sits in an aligned chip on average, shrunk where needed so that no part of
the picture is cut off.

Pure numpy and OpenCV: the gateway (no TensorFlow) uses it too.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

CHIP_SIZE = 150
CHIP_PADDING = 0.25

# BlazeFace keypoint rows.
RIGHT_EYE, LEFT_EYE, NOSE_TIP, MOUTH = 0, 1, 2, 3

# dlib's mean face shape (68-point markup, points 17-67, x then y in a unit square; dlib's
# get_face_chip_details). The keypoints BlazeFace gives are averages of some of these points.
_MEAN_FACE_X = (
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
)  # fmt: skip
_MEAN_FACE_Y = (
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
)  # fmt: skip


# Photo pixels per chip pixel below which a chip is smoothed: it magnifies the photo more than 2x (warp_chip).
MAGNIFIED = 0.5


def _mean_face_point(points: Sequence[int]) -> tuple[float, float]:
    """(x, y) average of 68-point markup points in dlib's unit square."""
    xs = [_MEAN_FACE_X[p - 17] for p in points]
    ys = [_MEAN_FACE_Y[p - 17] for p in points]
    return sum(xs) / len(xs), sum(ys) / len(ys)


# Where the keypoints used for the fit sit on the mean face: eye centres (the six points round each
# eye; the subject's right eye, 36-41, is on the image's left) and the mouth centre (inner lips, 60-67).
TEMPLATE = {
    RIGHT_EYE: _mean_face_point(range(36, 42)),
    LEFT_EYE: _mean_face_point(range(42, 48)),
    MOUTH: _mean_face_point(range(60, 68)),
}
FIT_KEYPOINTS = tuple(TEMPLATE)

# Where a BlazeFace box (ymin, xmin, ymax, xmax) sits in an aligned chip, in units of the padded
# chip side: centre and side of the box, measured over the faces of the sample photos (see
# docs/models.md). Used to frame faces that come without keypoints.
BOX_CENTRE_IN_CHIP = (0.50, 0.46)
BOX_SIDE_IN_CHIP = 0.9


def _chip_points(size: int, padding: float) -> np.ndarray:
    """The fitted template points in chip pixel coordinates (x, y), dlib's way: (padding + p) / (1 + 2 padding)."""
    unit = np.array([TEMPLATE[k] for k in FIT_KEYPOINTS], dtype=np.float64)
    return (padding + unit) / (1.0 + 2.0 * padding) * size


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity transform (no reflection) taking ``source`` points [n, 2] onto ``target``.

    Umeyama's method, as dlib's ``find_similarity_transform``.
    """
    source = np.asarray(source, np.float64)
    target = np.asarray(target, np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2 or len(source) < 2:
        raise ValueError(f"need two matching [n>=2, 2] point sets, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - source_mean, target - target_mean
    variance = (src**2).sum() / len(src)
    if variance <= 0:
        raise ValueError("the source points all coincide")
    covariance = dst.T @ src / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(singular) @ sign)) / variance
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


def _pixel_keypoints(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """Normalised (y, x) keypoints -> (x, y) in pixel-centre coordinates (pixel i's centre is at i)."""
    points = np.asarray(keypoints, np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) <= max(FIT_KEYPOINTS):
        raise ValueError(f"keypoints must be [6, 2] (y, x) in BlazeFace's order, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("keypoints must be finite numbers")
    return np.stack([points[:, 1] * width - 0.5, points[:, 0] * height - 0.5], axis=1)


def chip_to_image(keypoints: np.ndarray, image_shape: Sequence[int], size: int = CHIP_SIZE,
                  padding: float = CHIP_PADDING) -> np.ndarray:  # fmt: skip
    """The 2x3 affine map from chip pixel (x, y) to photo pixel (x, y) for an aligned chip of the keypoints' face.

    As dlib's ``extract_image_chip``: the fitted transform fixes the chip's centre, rotation and
    extent, and the chip's corner pixels land on the corners of that extent.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    image_points = _pixel_keypoints(keypoints, height, width)[list(FIT_KEYPOINTS)]
    fitted = similarity_transform(_chip_points(size, padding), image_points)
    return _corner_convention(fitted, size)


def _corner_convention(fitted: np.ndarray, size: int) -> np.ndarray:
    # dlib maps chip pixel 0 to the extent's left edge and pixel size-1 to its right edge, so a
    # chip pixel spans size/(size-1) of the fitted scale, around the extent's centre.
    linear = fitted[:, :2] * (size / (size - 1) if size > 1 else 1.0)
    centre_chip = np.array([size / 2.0, size / 2.0])
    centre_image = fitted[:, :2] @ centre_chip + fitted[:, 2]
    offset = centre_image - linear @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    return np.hstack([linear, offset[:, None]])


def warp_chip(pixels: np.ndarray, chip_to_photo: np.ndarray, size: int) -> np.ndarray:
    """Cut a ``size`` square chip out of ``pixels`` [H, W, C] through the affine map chip pixel -> photo pixel.

    Bilinear, after an area-averaging shrink of the region when the chip is much smaller than the face
    there (dlib uses an image pyramid for the same reason); outside the photo is black, as in dlib. When
    the chip magnifies the photo more than twice (a face a few dozen pixels wide), the chip is smoothed
    by half a photo pixel: bilinear magnification keeps every edge of the source's pixels and JPEG
    blocks, which the encoder reads as features (bench/encoder.py: a 25-px face after JPEG 30 is found
    again 100 % of the time with the smoothing, 74 % without).
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"pixels must be [H, W, C] with at least one pixel, got shape {pixels.shape}")
    matrix = np.asarray(chip_to_photo, np.float64)
    step = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # photo pixels per chip pixel
    corners = np.array([[0, 0, 1], [size - 1, 0, 1], [0, size - 1, 1], [size - 1, size - 1, 1]], np.float64)
    footprint = corners @ matrix.T
    factor = max(1, int(step))
    margin = 2 * factor + 2
    left = int(np.clip(np.floor(footprint[:, 0].min()) - margin, 0, pixels.shape[1]))
    top = int(np.clip(np.floor(footprint[:, 1].min()) - margin, 0, pixels.shape[0]))
    right = int(np.clip(np.ceil(footprint[:, 0].max()) + margin + 1, 0, pixels.shape[1]))
    bottom = int(np.clip(np.ceil(footprint[:, 1].max()) + margin + 1, 0, pixels.shape[0]))
    # Whole blocks of ``factor`` pixels, so the shrink is a plain block average.
    right = left + max(factor, (right - left) // factor * factor)
    bottom = top + max(factor, (bottom - top) // factor * factor)
    region = pixels[top:bottom, left:right]
    if region.shape[0] < factor or region.shape[1] < factor:  # the chip lies wholly outside the photo
        return np.zeros((size, size, pixels.shape[2]), pixels.dtype)
    region = region[: region.shape[0] // factor * factor, : region.shape[1] // factor * factor]
    shifted = matrix.copy()
    shifted[:, 2] -= (left, top)
    if factor > 1:
        region = cv2.resize(
            region, (region.shape[1] // factor, region.shape[0] // factor), interpolation=cv2.INTER_AREA
        )
        # Pixel centre i of the shrunk region is the centre of block i: (i + 0.5) * factor - 0.5.
        shifted = shifted / factor
        shifted[:, 2] += (0.5 / factor) - 0.5
    chip = cv2.warpAffine(
        np.ascontiguousarray(region),
        shifted,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    chip = chip.reshape(size, size, pixels.shape[2])
    if step < MAGNIFIED:
        chip = cv2.GaussianBlur(chip, (0, 0), 0.5 / step).reshape(chip.shape)
    return chip


def aligned_face_chip(
    pixels: np.ndarray, keypoints: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING
) -> np.ndarray:
    """The eye-levelled ``size`` x ``size`` chip of the face whose BlazeFace keypoints are given.

    ``pixels`` is the photo, [H, W, 3] (any dtype OpenCV can warp; uint8 in the pipeline).
    ``keypoints`` is [6, 2] (y, x) normalised to that photo, in BlazeFace's order (see the module
    docstring); the eyes and the mouth are fitted to dlib's mean face, framed with ``padding``.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return warp_chip(pixels, chip_to_image(keypoints, pixels.shape, size, padding), size)


def box_to_chip_map(box: Sequence[float], image_shape: Sequence[int], size: int = CHIP_SIZE) -> np.ndarray:
    """The 2x3 chip -> photo map that frames a normalised (ymin, xmin, ymax, xmax) face box as aligned chips
    frame a detected box on average (upright: a box says nothing about the eyes' tilt)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    side = max((ymax - ymin) * height, (xmax - xmin) * width)
    if not side > 0:
        raise ValueError(f"the face box {tuple(box)} is empty")
    centre_x, centre_y = (xmin + xmax) / 2 * width - 0.5, (ymin + ymax) / 2 * height - 0.5
    step = side / (BOX_SIDE_IN_CHIP * size)  # photo pixels per chip pixel
    offset_x = centre_x - step * (BOX_CENTRE_IN_CHIP[0] * size - 0.5)
    offset_y = centre_y - step * (BOX_CENTRE_IN_CHIP[1] * size - 0.5)
    return np.array([[step, 0.0, offset_x], [0.0, step, offset_y]])


def whole_image_chip(pixels: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """The chip of a picture that is already a face crop (``build-index --whole-image``), never cutting it.

    The picture is taken as the face's box and framed as aligned chips frame a box; where that would
    leave part of the picture outside the chip (a loose crop, or a long side), the picture is shrunk
    until all of it fits, centred.
    """
    return warp_chip(pixels, whole_image_map(pixels.shape, size), size)


def whole_image_map(image_shape: Sequence[int], size: int = CHIP_SIZE) -> np.ndarray:
    """The 2x3 chip -> picture map with which ``whole_image_chip`` frames a picture of ``image_shape``."""
    height, width = int(image_shape[0]), int(image_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"the picture has no pixels: shape {tuple(image_shape)}")
    matrix = box_to_chip_map((0.0, 0.0, 1.0, 1.0), image_shape, size)
    # The picture spans photo x in [-0.5, width - 0.5]; the chip covers matrix applied to [-0.5, size - 0.5].
    need = max(height, width) / size  # photo pixels per chip pixel for the whole picture to fit
    if matrix[0, 0] < need:
        centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0
        matrix = np.array(
            [
                [need, 0.0, centre_x - need * (size - 1) / 2.0],
                [0.0, need, centre_y - need * (size - 1) / 2.0],
            ]
        )
    return matrix
