"""The ``face_detection`` servable: MediaPipe's BlazeFace short-range detector as one TF Serving SavedModel.

Everything MediaPipe's ``face_detection_short_range`` graph does around the
network runs inside the SavedModel's graph, as core TF ops: letterbox the
uint8 image to 128x128 (aspect ratio kept, black bars), scale it to [-1, 1],
run the network rebuilt from the TFLite weights, decode the 896 SSD anchors,
sigmoid the clipped scores, non-max suppression, and map boxes and keypoints
back to normalised coordinates of the original image.

Signature ``serving_default``: ``input_images`` uint8 ``[1, H, W, 3]`` ->
``boxes`` ``[1, N, 4]`` (ymin, xmin, ymax, xmax), ``scores`` ``[1, N]``,
``classes`` ``[1, N]`` (1.0 = face), ``num_detections`` ``[1]`` and
``keypoints`` ``[1, N, 6, 2]`` (y, x: right eye, left eye, nose tip, mouth,
right ear tragion, left ear tragion), all float32, sorted by score, zero
beyond ``num_detections``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo import weights
from app.modelzoo.export import save_servable, warmup_log
from app.modelzoo.tflite_to_tf import TFLiteNetwork

SERVABLE_NAME = "face_detection"
INPUT_NAME = "input_images"
INPUT_SIZE = 128
NUM_ANCHORS = 896
NUM_KEYPOINTS = 6
# MediaPipe's face_detection_short_range options (SsdAnchorsCalculator, TensorsToDetectionsCalculator,
# NonMaxSuppressionCalculator).
ANCHOR_STRIDES = (8, 16, 16, 16)
ANCHOR_OFFSET = 0.5
BOX_SCALE = 128.0  # x_scale = y_scale = w_scale = h_scale
SCORE_CLIP = 100.0
MIN_SCORE = 0.5
IOU_THRESHOLD = 0.3
DEFAULT_MAX_DETECTIONS = 20
# TFLite tensor names: the network's outputs, and backbone feature maps (16x16x88, 8x8x96) for encoders.
REGRESSORS = "regressors"
CLASSIFICATORS = "classificators"
BACKBONE_FEATURES = ("activation_11", "activation_16")

_WARMUP_SHAPE = (1, 192, 256, 3)


def load_network(tflite_path: Path | None = None, *, weights_as_variables: bool = True) -> TFLiteNetwork:
    """BlazeFace short-range rebuilt as TF ops (the cached MediaPipe weights unless a path is given)."""
    path = tflite_path if tflite_path is not None else weights.face_detection_short_range_tflite()
    return TFLiteNetwork(Path(path), weights_as_variables=weights_as_variables, name="blazeface")


def raw_network(
    tflite_path: Path | None = None,
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The bare network: float32 ``[1, 128, 128, 3]`` in [-1, 1] -> (regressors ``[1, 896, 16]``,
    classificators ``[1, 896, 1]``), the TFLite model's own outputs, for parity checks."""
    network = load_network(tflite_path)

    @tf.function(input_signature=[tf.TensorSpec([1, INPUT_SIZE, INPUT_SIZE, 3], tf.float32)])
    def run(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        regressors, classificators = network(images, [REGRESSORS, CLASSIFICATORS])
        return regressors, classificators

    return run


def ssd_anchors(strides: tuple[int, ...] = ANCHOR_STRIDES, input_size: int = INPUT_SIZE) -> np.ndarray:
    """Anchor centres ``[num_anchors, 2]`` as (x, y) in [0, 1] of the network input, in the network's order.

    MediaPipe's SsdAnchorsCalculator with ``fixed_anchor_size`` (every anchor is 1x1, so only centres
    matter): consecutive layers with the same stride share one feature map and each contributes two
    anchors per cell (aspect ratio 1 plus the interpolated scale), cells in row-major order.
    """
    centres = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        same = 1
        while layer + same < len(strides) and strides[layer + same] == stride:
            same += 1
        cells = -(-input_size // stride)  # ceil, as MediaPipe sizes the feature maps
        offsets = (np.arange(cells, dtype=np.float64) + ANCHOR_OFFSET) / cells
        y, x = np.meshgrid(offsets, offsets, indexing="ij")
        grid = np.stack([x.ravel(), y.ravel()], axis=-1)
        centres.append(np.repeat(grid, 2 * same, axis=0))
        layer += same
    return np.concatenate(centres).astype(np.float32)


def letterbox(images: tf.Tensor, size: int = INPUT_SIZE) -> tuple[tf.Tensor, tf.Tensor]:
    """Fit ``images`` (uint8 or float in [0, 255], NHWC) into a ``size`` square, keeping the aspect ratio.

    Returns the canvas scaled to [-1, 1] (bars are black, i.e. -1) and the image's window on it as
    float32 ``[top, left, height, width]`` in canvas pixels, to map detections back.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    height, width = shape[1], shape[2]
    longest = tf.maximum(height, width)
    # Integer round(h * size / longest), at least one pixel for extreme aspect ratios.
    new_height = tf.maximum(1, (height * size + longest // 2) // longest)
    new_width = tf.maximum(1, (width * size + longest // 2) // longest)
    # Antialiasing matters here: phone photos are shrunk 20-30x to reach 128 pixels.
    resized = tf.image.resize(tf.cast(images, tf.float32), [new_height, new_width], antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 255.0)
    top = (size - new_height) // 2
    left = (size - new_width) // 2
    canvas = tf.pad(resized, [[0, 0], [top, size - new_height - top], [left, size - new_width - left], [0, 0]])
    canvas = tf.ensure_shape(canvas, [None, size, size, None])
    window = tf.cast(tf.stack([top, left, new_height, new_width]), tf.float32)
    return canvas / 127.5 - 1.0, window


class FaceDetector(tf.Module):
    """BlazeFace plus MediaPipe's pre- and post-processing; ``detect`` is the serving signature."""

    def __init__(
        self,
        network: TFLiteNetwork,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        min_score: float = MIN_SCORE,
        iou_threshold: float = IOU_THRESHOLD,
    ) -> None:
        super().__init__(name="face_detector")
        if max_detections < 1:
            raise ValueError(f"max_detections must be positive, got {max_detections}")
        self.network = network
        self.max_detections = max_detections
        self.min_score = min_score
        self.iou_threshold = iou_threshold
        self._anchors = ssd_anchors()

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def detect(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(input_images)
        tf.debugging.assert_positive(shape[1] * shape[2], message="input_images must not be empty")
        canvas, window = letterbox(input_images)
        regressors, classificators = self.network(canvas, [REGRESSORS, CLASSIFICATORS])
        raw = regressors[0]
        anchors = tf.constant(self._anchors)  # (x, y)

        # Boxes are (x_centre, y_centre, w, h) offsets in input pixels; anchors are 1x1 (fixed size).
        centre = raw[:, 0:2] / BOX_SCALE + anchors
        half = raw[:, 2:4] / BOX_SCALE / 2.0
        low, high = centre - half, centre + half
        boxes = tf.stack([low[:, 1], low[:, 0], high[:, 1], high[:, 0]], axis=-1)
        keypoints = tf.reshape(raw[:, 4:], [-1, NUM_KEYPOINTS, 2]) / BOX_SCALE + anchors[:, None, :]
        keypoints = tf.reverse(keypoints, axis=[-1])  # (x, y) -> (y, x)
        scores = tf.sigmoid(tf.clip_by_value(classificators[0, :, 0], -SCORE_CLIP, SCORE_CLIP))

        # Letterboxing is a uniform scale, so IoU on the canvas is IoU on the image.
        selected = tf.image.non_max_suppression(
            boxes,
            scores,
            max_output_size=self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=self.min_score,
        )
        count = tf.shape(selected)[0]
        padding = [[0, self.max_detections - count]]
        valid = tf.pad(tf.ones([count], tf.bool), padding)
        selected = tf.pad(selected, padding)

        # Canvas coordinates in [0, 1] -> canvas pixels -> the image's window -> [0, 1] of the image.
        origin = tf.stack([window[0], window[1]])
        extent = tf.stack([window[2], window[3]])
        corners = tf.reshape(tf.gather(boxes, selected), [-1, 2, 2])
        corners = tf.clip_by_value((corners * INPUT_SIZE - origin) / extent, 0.0, 1.0)
        points = tf.gather(keypoints, selected)
        points = tf.clip_by_value((points * INPUT_SIZE - origin) / extent, 0.0, 1.0)

        mask = tf.cast(valid, tf.float32)
        n = self.max_detections
        # Reshapes give the signature static [1, N, ...] shapes for the gateway to read from metadata.
        return {
            "boxes": tf.reshape(tf.reshape(corners, [-1, 4]) * mask[:, None], [1, n, 4]),
            "scores": tf.reshape(tf.gather(scores, selected) * mask, [1, n]),
            "classes": tf.reshape(mask, [1, n]),
            "num_detections": tf.reshape(tf.cast(count, tf.float32), [1]),
            "keypoints": tf.reshape(points * mask[:, None, None], [1, n, NUM_KEYPOINTS, 2]),
        }


def export_face_detector(
    export_dir: Path,
    tflite_path: Path | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> Path:
    """Write the ``face_detection`` SavedModel, with a warmup record, as the version directory ``export_dir``.

    It is staged beside ``export_dir`` and renamed into place (``export.save_servable``), so a polling
    model server never sees a half-written version; an existing version is never overwritten.
    """
    detector = FaceDetector(load_network(tflite_path), max_detections=max_detections)
    # Non-square and mid-grey, so warmup runs the letterbox padding and the whole post-processing.
    warmup = [warmup_log(SERVABLE_NAME, {INPUT_NAME: np.full(_WARMUP_SHAPE, 128, np.uint8)})]
    return save_servable(
        detector,
        Path(export_dir),
        {"serving_default": detector.detect.get_concrete_function()},
        warmup=warmup,
    )
