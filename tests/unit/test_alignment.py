"""Face chips: dlib's framing from the detector's keypoints, eyes level, no aliasing, tiny faces smoothed, whole
pictures never cut."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app import alignment
from app.alignment import CHIP_PADDING, CHIP_SIZE, TEMPLATE, aligned_face_chip, chip_to_image, whole_image_chip


def _template_in_chip(key: int, size: int = CHIP_SIZE) -> np.ndarray:
    """Where dlib puts a template point in a chip: (padding + p) / (1 + 2 padding) * size, as (x, y)."""
    return (CHIP_PADDING + np.array(TEMPLATE[key])) / (1 + 2 * CHIP_PADDING) * size


def _face_keypoints(centre_xy, eye_distance, angle_deg, height, width) -> np.ndarray:
    """BlazeFace-style keypoints [6, 2] (y, x normalised) of a face whose template is scaled, rotated and moved."""
    template = np.array([TEMPLATE[k] for k in (0, 1)] + [(0.49, 0.52), TEMPLATE[3], (0.0, 0.4), (1.0, 0.4)])
    template_eye_distance = TEMPLATE[1][0] - TEMPLATE[0][0]
    scale = eye_distance / template_eye_distance
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    points = (template - 0.5) * scale @ rotation.T + np.asarray(centre_xy)  # pixel-edge coordinates (x, y)
    return np.stack([points[:, 1] / height, points[:, 0] / width], axis=1)


def _dots(height, width, keypoints) -> np.ndarray:
    """A black photo with a bright disc on each of the two eyes and the mouth (red, green, blue)."""
    image = np.zeros((height, width, 3), np.uint8)
    for key, channel in ((0, 0), (1, 1), (3, 2)):
        y, x = keypoints[key]
        layer = np.ascontiguousarray(image[:, :, channel])
        cv2.circle(layer, (round(x * width * 16), round(y * height * 16)), 6 * 16, 255, -1, cv2.LINE_AA, shift=4)
        image[:, :, channel] = layer
    return image


def _centroid(layer: np.ndarray) -> np.ndarray:
    weights = layer.astype(np.float64)
    ys, xs = np.mgrid[: layer.shape[0], : layer.shape[1]]
    # Pixel centres at i + 0.5, like the template points.
    return np.array([(weights * (xs + 0.5)).sum(), (weights * (ys + 0.5)).sum()]) / weights.sum()


def test_similarity_transform_recovers_scale_rotation_and_shift():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (5, 2))
    theta = np.deg2rad(-23.0)
    matrix = 1.7 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    target = source @ matrix.T + [12.0, -4.0]
    found = alignment.similarity_transform(source, target)
    np.testing.assert_allclose(found[:, :2], matrix, atol=1e-9)
    np.testing.assert_allclose(found[:, 2], [12.0, -4.0], atol=1e-9)


def test_similarity_transform_never_reflects():
    source = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mirrored = source * [-1.0, 1.0]
    found = alignment.similarity_transform(source, mirrored)
    assert np.linalg.det(found[:, :2]) > 0


@pytest.mark.parametrize("angle", [-30.0, -12.0, 0.0, 17.0, 35.0])
def test_eyes_and_mouth_land_on_dlibs_template_points(angle):
    height, width = 600, 800
    keypoints = _face_keypoints((430, 260), eye_distance=120, angle_deg=angle, height=height, width=width)
    chip = aligned_face_chip(_dots(height, width, keypoints), keypoints)
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3) and chip.dtype == np.uint8
    for key, channel in ((0, 0), (1, 1), (3, 2)):
        # Within half a chip pixel (dlib's corner convention shifts points by under 1/149 of their offset).
        np.testing.assert_allclose(_centroid(chip[:, :, channel]), _template_in_chip(key), atol=0.6)
    right_eye, left_eye = _centroid(chip[:, :, 0]), _centroid(chip[:, :, 1])
    assert abs(right_eye[1] - left_eye[1]) < 0.3  # level
    assert right_eye[0] < left_eye[0]  # the subject's right eye stays on the chip's left


def test_chip_corners_follow_dlibs_extract_image_chip():
    # A face at scale s: chip pixel 0 maps to the left edge of the extent and pixel size-1 to its right edge.
    height, width = 400, 400
    keypoints = _face_keypoints((200, 200), eye_distance=100, angle_deg=0.0, height=height, width=width)
    matrix = chip_to_image(keypoints, (height, width))
    template_eye_distance = TEMPLATE[1][0] - TEMPLATE[0][0]
    fitted_scale = 100 / (template_eye_distance / (1 + 2 * CHIP_PADDING) * CHIP_SIZE)  # photo px per chip unit
    first = matrix @ [0, 0, 1]
    last = matrix @ [CHIP_SIZE - 1, CHIP_SIZE - 1, 1]
    np.testing.assert_allclose(last - first, [fitted_scale * CHIP_SIZE] * 2, rtol=1e-9)


def test_large_faces_are_averaged_not_aliased():
    # A one-pixel checkerboard seen through a chip 8x smaller: bilinear alone would pick near-black
    # and near-white pixels; the area-averaged shrink gives an even grey.
    height = width = 1600
    board = ((np.indices((height, width)).sum(axis=0) % 2) * 255).astype(np.uint8)
    photo = np.repeat(board[:, :, None], 3, axis=2)
    keypoints = _face_keypoints((800, 800), eye_distance=8 * 53, angle_deg=10.0, height=height, width=width)
    chip = aligned_face_chip(photo, keypoints)
    centre = chip[40:110, 40:110].astype(np.float64)
    assert abs(centre.mean() - 127.5) < 3 and centre.std() < 6


def test_outside_the_photo_is_black_and_a_face_off_the_photo_gives_a_black_chip():
    photo = np.full((300, 300, 3), 200, np.uint8)
    edge = _face_keypoints((150, 20), eye_distance=80, angle_deg=0.0, height=300, width=300)
    chip = aligned_face_chip(photo, edge)
    assert (chip[0] == 0).all() and (chip[-1] == 200).all()
    gone = _face_keypoints((5000, 5000), eye_distance=80, angle_deg=0.0, height=300, width=300)
    assert not aligned_face_chip(photo, gone).any()


@pytest.mark.parametrize("keypoints", [np.zeros((3, 2)), np.zeros((6, 3)), np.full((6, 2), np.nan), np.zeros(12)])
def test_bad_keypoints_are_refused(keypoints):
    with pytest.raises(ValueError, match="keypoints"):
        aligned_face_chip(np.zeros((10, 10, 3), np.uint8), keypoints)


def test_size_follows_the_encoder_input():
    keypoints = _face_keypoints((100, 100), eye_distance=50, angle_deg=0.0, height=200, width=200)
    assert aligned_face_chip(np.zeros((200, 200, 3), np.uint8), keypoints, size=112).shape == (112, 112, 3)


@pytest.mark.parametrize("shape", [(25, 25), (120, 90), (90, 160), (1000, 700)])
def test_whole_picture_is_never_cut(shape):
    # A picture with a coloured frame: every side of the frame must show up in the chip.
    height, width = shape
    picture = np.zeros((height, width, 3), np.uint8)
    border = max(1, min(height, width) // 12)
    picture[:border, :, 0] = picture[-border:, :, 0] = 255
    picture[:, :border, 1] = picture[:, -border:, 1] = 255
    chip = whole_image_chip(picture)
    assert chip.shape == (CHIP_SIZE, CHIP_SIZE, 3)
    red_rows = np.flatnonzero(chip[:, :, 0].max(axis=1) > 100)
    green_cols = np.flatnonzero(chip[:, :, 1].max(axis=0) > 100)
    # Two separate bands of each colour: the frame's top and bottom, left and right all made it in.
    assert np.diff(red_rows).max() > 5 and np.diff(green_cols).max() > 5


def test_whole_picture_of_a_face_is_framed_like_an_aligned_chip():
    # A tight face crop fills about as much of its chip as a detected face box fills an aligned chip.
    picture = np.full((100, 100, 3), 255, np.uint8)
    chip = whole_image_chip(picture)
    covered = np.flatnonzero(chip[CHIP_SIZE // 2, :, 0] > 128)
    side = (covered[-1] - covered[0] + 1) / CHIP_SIZE
    assert abs(side - alignment.BOX_SIDE_IN_CHIP) < 0.02


def _largest_step(chip: np.ndarray) -> float:
    """The largest difference between two neighbouring chip pixels, across or down."""
    values = chip.astype(np.float64)
    return max(np.abs(np.diff(values, axis=0)).max(), np.abs(np.diff(values, axis=1)).max())


def _plain_bilinear(picture: np.ndarray, chip_to_photo: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpAffine(
        picture, chip_to_photo, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )  # fmt: skip


def test_a_chip_that_magnifies_a_tiny_picture_more_than_twice_is_smoothed():
    # A 24-px picture, black on the left and white on the right, spread over 150 chip pixels (6.25x). Bilinear
    # alone ramps the edge over one photo pixel, 6.25 chip pixels: steps of 255 / 6.25 = 41 levels. Smoothed by
    # half a photo pixel, the edge spreads over about twice that, and no step comes near.
    picture = np.zeros((24, 24, 3), np.uint8)
    picture[:, 12:] = 255
    step = 24 / CHIP_SIZE  # photo pixels per chip pixel
    matrix = np.array([[step, 0.0, step / 2 - 0.5], [0.0, step, step / 2 - 0.5]])  # the picture fills the chip
    centre = slice(30, 120)  # the picture's own edge; the chip's border meets the black outside
    plain = _plain_bilinear(picture, matrix, CHIP_SIZE)[centre, centre]
    chip = alignment.warp_chip(picture, matrix, CHIP_SIZE)[centre, centre]
    assert _largest_step(plain) >= 0.95 * 255 * step  # the hard edge bilinear magnification keeps
    assert _largest_step(chip) <= 0.8 * 255 * step
    assert chip[:, 0].max() <= 1 and chip[:, -1].min() >= 254  # an edge smoothed, not a picture washed out


@pytest.mark.parametrize("step", [1.0, 1.6, 0.55])  # as large as the chip, larger, magnified under 2x
def test_a_chip_that_does_not_magnify_more_than_twice_is_the_plain_bilinear_warp(step):
    rng = np.random.default_rng(3)
    picture = rng.integers(0, 256, (320, 320, 3), np.uint8)
    picture[:, 160:] = 255  # with a hard edge too
    matrix = np.array([[step, 0.0, 20.3], [0.0, step, 11.7]])
    chip = alignment.warp_chip(picture, matrix, CHIP_SIZE).astype(np.int16)
    # Equal but for OpenCV's fixed-point rounding (the warp reads a crop of the picture, shifted): one level.
    assert np.abs(chip - _plain_bilinear(picture, matrix, CHIP_SIZE)).max() <= 1
