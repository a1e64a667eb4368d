"""The ``face_detection`` servable: MediaPipe's BlazeFace detectors (short and full range) as one SavedModel.

Everything MediaPipe's ``face_detection_short_range`` / ``_full_range`` graphs do
around their networks runs inside the SavedModel's graph, as core TF ops: letterbox
the uint8 image (aspect ratio kept, black bars) to the network's input (128 px
short range, 192 px full range), scale it to [-1, 1], run the network rebuilt from
the TFLite weights, decode the SSD anchors (896 / 2,304), sigmoid the clipped
scores, non-max suppression, and map boxes and keypoints back to normalised
coordinates of the original image.

The demo detector (:func:`demo_views`) runs the short-range model on the whole
photo (close-ups, selfies) and the full-range model on the whole photo and on 3 x 3
overlapping tiles in one batch (group photos: faces down to ~3 % of the width);
the candidates of every view go through one non-max suppression.

Signature ``serving_default``: ``input_images`` uint8 ``[1, H, W, 3]`` ->
``boxes`` ``[1, N, 4]`` (ymin, xmin, ymax, xmax), ``scores`` ``[1, N]``,
``classes`` ``[1, N]`` (1.0 = face), ``num_detections`` ``[1]`` and
``keypoints`` ``[1, N, 6, 2]`` (y, x: right eye, left eye, nose tip, mouth,
right ear tragion, left ear tragion), all float32, sorted by score, zero
beyond ``num_detections``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo import weights
from app.modelzoo.export import save_servable, warmup_log
from app.modelzoo.tflite_to_tf import TFLiteNetwork

SERVABLE_NAME = "face_detection"
INPUT_NAME = "input_images"
NUM_KEYPOINTS = 6
ANCHOR_OFFSET = 0.5
SCORE_CLIP = 100.0
IOU_THRESHOLD = 0.3
DEFAULT_MAX_DETECTIONS = 50
# TFLite tensor names: the network's outputs, and backbone feature maps (16x16x88, 8x8x96) for encoders.
REGRESSORS = "regressors"
CLASSIFICATORS = "classificators"
BACKBONE_FEATURES = ("activation_11", "activation_16")


@dataclass(frozen=True)
class BlazeFaceModel:
    """One of MediaPipe's BlazeFace models and the options its graph runs it with (face_detection_*.pbtxt:
    SsdAnchorsCalculator, TensorsToDetectionsCalculator)."""

    name: str
    asset: weights.WheelAsset
    input_size: int  # tensor_width = tensor_height; also x/y/w/h_scale
    strides: tuple[int, ...]
    # interpolated_scale_aspect_ratio > 0 adds a second anchor per cell and layer.
    interpolated_anchor: bool
    min_score: float
    outputs: tuple[str, str]  # TFLite names of (regressors, classificators)

    @property
    def num_anchors(self) -> int:
        return len(ssd_anchors(self))


SHORT_RANGE = BlazeFaceModel(
    "short_range",
    weights.FACE_DETECTION_SHORT_RANGE,
    input_size=128,
    strides=(8, 16, 16, 16),
    interpolated_anchor=True,
    min_score=0.5,
    outputs=(REGRESSORS, CLASSIFICATORS),
)
FULL_RANGE = BlazeFaceModel(
    "full_range",
    weights.FACE_DETECTION_FULL_RANGE,
    input_size=192,
    strides=(4,),
    interpolated_anchor=False,
    min_score=0.6,
    outputs=("Identity", "Identity_1"),
)
INPUT_SIZE = SHORT_RANGE.input_size
NUM_ANCHORS = 896
MIN_SCORE = SHORT_RANGE.min_score

_WARMUP_SHAPE = (1, 192, 256, 3)


def load_network(
    tflite_path: Path | None = None, *, weights_as_variables: bool = True, model: BlazeFaceModel = SHORT_RANGE
) -> TFLiteNetwork:
    """A BlazeFace network rebuilt as TF ops, taking any batch (the cached MediaPipe weights unless a path is given)."""
    path = tflite_path if tflite_path is not None else weights.fetch_wheel_asset(model.asset)
    return TFLiteNetwork(
        Path(path), weights_as_variables=weights_as_variables, any_batch=True, name=f"blazeface_{model.name}"
    )


def raw_network(
    tflite_path: Path | None = None, model: BlazeFaceModel = SHORT_RANGE
) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """The bare network: float32 ``[1, size, size, 3]`` in [-1, 1] -> (regressors ``[1, anchors, 16]``,
    classificators ``[1, anchors, 1]``), the TFLite model's own outputs, for parity checks."""
    network = load_network(tflite_path, model=model)
    size = model.input_size

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32)])
    def run(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        regressors, classificators = network(images, list(model.outputs))
        return regressors, classificators

    return run


def ssd_anchors(model: BlazeFaceModel = SHORT_RANGE) -> np.ndarray:
    """Anchor centres ``[num_anchors, 2]`` as (x, y) in [0, 1] of the network input, in the network's order.

    MediaPipe's SsdAnchorsCalculator with ``fixed_anchor_size`` (every anchor is 1x1, so only centres
    matter): consecutive layers with the same stride share one feature map and each contributes one
    anchor per cell (aspect ratio 1), plus one more with an interpolated scale, cells in row-major order.
    """
    strides, input_size = model.strides, model.input_size
    per_layer = 2 if model.interpolated_anchor else 1
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
        centres.append(np.repeat(grid, per_layer * same, axis=0))
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


@dataclass(frozen=True)
class View:
    """One run of a network inside the detector: which model, and which region of the photo it looks at
    (normalised ymin, xmin, ymax, xmax). A region smaller than the photo enlarges its faces for the network."""

    model: BlazeFaceModel
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    @property
    def whole(self) -> bool:
        return self.region == (0.0, 0.0, 1.0, 1.0)


def tiles(model: BlazeFaceModel, grid: int, overlap: float) -> tuple[View, ...]:
    """``grid`` x ``grid`` overlapping regions covering the photo, each ``overlap`` of a region shared with the next."""
    side = 1.0 / (grid - (grid - 1) * overlap)
    step = side * (1.0 - overlap)
    starts = [min(i * step, 1.0 - side) for i in range(grid)]
    return tuple(View(model, (top, left, top + side, left + side)) for top in starts for left in starts)


# Of two boxes that share this much of the smaller one's area, the less sure one is dropped.
NESTED_OVERLAP = 0.6
# Tiles are skipped for a close-up: a photo with a face this sure and at least this wide (of the photo's width).
PORTRAIT_SCORE = 0.7
PORTRAIT_WIDTH = 0.2
# A detection in a tile whose box crosses an inner edge of the tile by more than this (of the tile) is a
# face the tile cut: the view that holds the whole face reports it.
_TILE_EDGE_TOLERANCE = 0.02


def _drop_nested(boxes: tf.Tensor, selected: tf.Tensor) -> tf.Tensor:
    """``selected`` (indices into ``boxes``, best first) less each box that mostly holds, or is mostly held
    by, a better one: a face seen at two scales (a tile and the whole photo) can give a box round the
    face and a larger one round the head whose IoU is under the threshold."""
    chosen = tf.gather(boxes, selected)
    low = tf.maximum(chosen[:, None, :2], chosen[None, :, :2])
    high = tf.minimum(chosen[:, None, 2:], chosen[None, :, 2:])
    overlap = tf.reduce_prod(tf.maximum(high - low, 0.0), axis=-1)
    area = tf.reduce_prod(tf.maximum(chosen[:, 2:] - chosen[:, :2], 0.0), axis=-1)
    smaller = tf.maximum(tf.minimum(area[:, None], area[None, :]), 1e-12)
    n = tf.shape(selected)[0]
    better = tf.linalg.band_part(tf.ones([n, n], tf.bool), -1, 0) & ~tf.eye(n, dtype=tf.bool)  # j < i
    nested = tf.reduce_any((overlap / smaller > NESTED_OVERLAP) & better, axis=1)
    return tf.boolean_mask(selected, ~nested)


class FaceDetector(tf.Module):
    """BlazeFace network(s) plus MediaPipe's pre- and post-processing; ``detect`` is the serving signature.

    Each view letterboxes its region of the photo into its network's input, decodes the anchors and
    maps boxes and keypoints back to the photo; the candidates of all views then go through one
    non-max suppression.
    """

    def __init__(
        self,
        networks: TFLiteNetwork | dict[str, TFLiteNetwork],
        views: tuple[View, ...] = (View(SHORT_RANGE),),
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        iou_threshold: float = IOU_THRESHOLD,
    ) -> None:
        super().__init__(name="face_detector")
        if max_detections < 1:
            raise ValueError(f"max_detections must be positive, got {max_detections}")
        if isinstance(networks, TFLiteNetwork):
            networks = {views[0].model.name: networks}
        missing = {view.model.name for view in views} - set(networks)
        if missing:
            raise ValueError(f"no network for the views of {', '.join(sorted(missing))}")
        self.networks = networks
        self.views = views
        self.max_detections = max_detections
        self.iou_threshold = iou_threshold
        self._anchors = {view.model.name: ssd_anchors(view.model) for view in views}

    def _candidates(
        self, images: tf.Tensor, model: BlazeFaceModel, views: list[View]
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(boxes [V*A, 4], keypoints [V*A, 6, 2], scores [V*A]) of one model's views, normalised to the whole
        photo, from one batched network call; scores below the model's threshold, and faces a tile cut, are 0."""
        size = model.input_size
        shape = tf.shape(images)
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        canvases, windows, origins, extents = [], [], [], []
        for view in views:
            top = tf.cast(tf.floor(view.region[0] * height), tf.int32)
            left = tf.cast(tf.floor(view.region[1] * width), tf.int32)
            bottom = tf.maximum(top + 1, tf.cast(tf.math.ceil(view.region[2] * height), tf.int32))
            right = tf.maximum(left + 1, tf.cast(tf.math.ceil(view.region[3] * width), tf.int32))
            canvas, window = letterbox(images if view.whole else images[:, top:bottom, left:right], size)
            canvases.append(canvas)
            windows.append(window)
            origins.append(tf.stack([tf.cast(top, tf.float32) / height, tf.cast(left, tf.float32) / width]))
            extents.append(
                tf.stack([tf.cast(bottom - top, tf.float32) / height, tf.cast(right - left, tf.float32) / width])
            )
        regressors, classificators = self.networks[model.name](tf.concat(canvases, axis=0), list(model.outputs))
        anchors = tf.constant(self._anchors[model.name])  # (x, y)

        # Boxes are (x_centre, y_centre, w, h) offsets in input pixels; anchors are 1x1 (fixed size).
        centre = regressors[..., 0:2] / size + anchors
        half = regressors[..., 2:4] / size / 2.0
        corners = tf.stack([(centre - half)[..., ::-1], (centre + half)[..., ::-1]], axis=2)  # [V, A, 2, 2] (y, x)
        keypoints = tf.reshape(regressors[..., 4:], [len(views), -1, NUM_KEYPOINTS, 2]) / size + anchors[:, None, :]
        keypoints = tf.reverse(keypoints, axis=[-1])  # (x, y) -> (y, x)
        scores = tf.sigmoid(tf.clip_by_value(classificators[..., 0], -SCORE_CLIP, SCORE_CLIP))  # [V, A]

        # Canvas [0, 1] -> canvas pixels -> [0, 1] of the region.
        window = tf.stack(windows)[:, None, None, :]  # [V, 1, 1, 4]
        corners = (corners * size - window[..., 0:2]) / window[..., 2:4]
        keypoints = (keypoints * size - window[..., 0:2]) / window[..., 2:4]
        # A face a tile cut shows as a box across an inner edge of the tile (the photo's own edges may cut).
        inner = tf.constant(
            [[v.region[0] > 0, v.region[1] > 0, v.region[2] < 1, v.region[3] < 1] for v in views], tf.bool
        )[:, None, :]
        crossing = tf.stack(
            [
                corners[:, :, 0, 0] < -_TILE_EDGE_TOLERANCE,
                corners[:, :, 0, 1] < -_TILE_EDGE_TOLERANCE,
                corners[:, :, 1, 0] > 1 + _TILE_EDGE_TOLERANCE,
                corners[:, :, 1, 1] > 1 + _TILE_EDGE_TOLERANCE,
            ],
            axis=2,
        )
        keep = (scores >= model.min_score) & ~tf.reduce_any(crossing & inner, axis=2)
        scores = tf.where(keep, scores, tf.zeros_like(scores))
        # [0, 1] of the region -> [0, 1] of the photo.
        origin = tf.stack(origins)[:, None, None, :]
        extent = tf.stack(extents)[:, None, None, :]
        corners = origin + corners * extent
        keypoints = origin + keypoints * extent
        return tf.reshape(corners, [-1, 4]), tf.reshape(keypoints, [-1, NUM_KEYPOINTS, 2]), tf.reshape(scores, [-1])

    def _run(self, images: tf.Tensor, views: list[View]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The candidates of ``views``, one batched network call per model."""
        by_model: dict[str, list[View]] = {}
        for view in views:
            by_model.setdefault(view.model.name, []).append(view)
        found = [self._candidates(images, group[0].model, group) for group in by_model.values()]
        return (
            tf.concat([f[0] for f in found], axis=0),
            tf.concat([f[1] for f in found], axis=0),
            tf.concat([f[2] for f in found], axis=0),
        )

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name=INPUT_NAME)])
    def detect(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
        shape = tf.shape(input_images)
        tf.debugging.assert_positive(shape[1] * shape[2], message="input_images must not be empty")
        boxes, keypoints, scores = self._run(input_images, [view for view in self.views if view.whole])
        tile_views = [view for view in self.views if not view.whole]
        if tile_views:
            # A close-up (a face at least PORTRAIT_WIDTH of the photo's width) has no small faces worth
            # the tiles' cost; any other photo is searched tile by tile as well.
            width = boxes[:, 3] - boxes[:, 1]
            close_up = tf.reduce_any((scores >= PORTRAIT_SCORE) & (width >= PORTRAIT_WIDTH))
            tiled = tf.cond(
                close_up,
                lambda: (tf.zeros([0, 4]), tf.zeros([0, NUM_KEYPOINTS, 2]), tf.zeros([0])),
                lambda: self._run(input_images, tile_views),
            )
            boxes = tf.concat([boxes, tiled[0]], axis=0)
            keypoints = tf.concat([keypoints, tiled[1]], axis=0)
            scores = tf.concat([scores, tiled[2]], axis=0)

        # IoU is unchanged by scaling each axis, so boxes normalised to a non-square photo compare as pixels do.
        selected = tf.image.non_max_suppression(
            boxes,
            scores,
            max_output_size=2 * self.max_detections,
            iou_threshold=self.iou_threshold,
            score_threshold=min(view.model.min_score for view in self.views),
        )
        selected = _drop_nested(boxes, selected)[: self.max_detections]
        count = tf.shape(selected)[0]
        padding = [[0, self.max_detections - count]]
        valid = tf.pad(tf.ones([count], tf.bool), padding)
        selected = tf.pad(selected, padding)
        corners = tf.clip_by_value(tf.gather(boxes, selected), 0.0, 1.0)
        points = tf.clip_by_value(tf.gather(keypoints, selected), 0.0, 1.0)

        mask = tf.cast(valid, tf.float32)
        n = self.max_detections
        # Reshapes give the signature static [1, N, ...] shapes for the gateway to read from metadata.
        return {
            "boxes": tf.reshape(corners * mask[:, None], [1, n, 4]),
            "scores": tf.reshape(tf.gather(scores, selected) * mask, [1, n]),
            "classes": tf.reshape(mask, [1, n]),
            "num_detections": tf.reshape(tf.cast(count, tf.float32), [1]),
            "keypoints": tf.reshape(points * mask[:, None, None], [1, n, NUM_KEYPOINTS, 2]),
        }


def demo_views() -> tuple[View, ...]:
    """What the demo detector looks at: the whole photo through both models (short range for close-ups and
    selfies, full range for people further away), then, unless the photo is a close-up, the full-range
    model again over 2 x 2 and 4 x 4 overlapping tiles (faces enlarged 1.75 and 3.25 times; each tile
    overlaps its neighbour by more than the faces the coarser view misses), so that faces down to about
    3 % of the photo's width are found."""
    return (
        View(SHORT_RANGE),
        View(FULL_RANGE),
        *tiles(FULL_RANGE, grid=2, overlap=0.25),
        *tiles(FULL_RANGE, grid=4, overlap=0.25),
    )


def build_demo_detector(
    short_range_path: Path | None = None,
    full_range_path: Path | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> FaceDetector:
    """The demo ``face_detection`` module (see :func:`demo_views`), from the cached MediaPipe weights by default."""
    networks = {
        SHORT_RANGE.name: load_network(short_range_path, model=SHORT_RANGE),
        FULL_RANGE.name: load_network(full_range_path, model=FULL_RANGE),
    }
    return FaceDetector(networks, demo_views(), max_detections=max_detections)


def export_face_detector(
    export_dir: Path,
    short_range_path: Path | None = None,
    full_range_path: Path | None = None,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> Path:
    """Write the ``face_detection`` SavedModel, with a warmup record, as the version directory ``export_dir``.

    It is staged beside ``export_dir`` and renamed into place (``export.save_servable``), so a polling
    model server never sees a half-written version; an existing version is never overwritten.
    """
    if Path(export_dir).exists():  # said before the seconds of building a detector that could not be written
        raise FileExistsError(f"{export_dir} already exists")
    detector = build_demo_detector(short_range_path, full_range_path, max_detections)
    # Non-square and mid-grey, so warmup runs the letterbox padding and the whole post-processing.
    warmup = [warmup_log(SERVABLE_NAME, {INPUT_NAME: np.full(_WARMUP_SHAPE, 128, np.uint8)})]
    return save_servable(
        detector,
        Path(export_dir),
        {"serving_default": detector.detect.get_concrete_function()},
        warmup=warmup,
    )
