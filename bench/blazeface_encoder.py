"""The first demo encoder (BlazeFace's backbone map pooled to 4,096 values), kept only as the benchmarks' "old" column.

It is not a face recognition model: bench/encoder.py shows it finds the right person
at chance level. A 16x16x64 feature map of the detector's backbone (TFLite tensor
``activation_8``) on a 128x128 face crop, centred per channel, average-pooled to an
8x8 grid and L2-normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo.blazeface import load_network

INPUT_SIZE = 128
FEATURE = "activation_8"
GRID = 8


class BlazeFaceBackboneEncoder(tf.Module):
    """uint8 face crops [N, 128, 128, 3] -> [N, 4096] unit latents."""

    def __init__(self, tflite_path: Path | None = None) -> None:
        super().__init__(name="blazeface_backbone_encoder")
        self.network = load_network(tflite_path)

    @tf.function(input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)])
    def encode(self, images: tf.Tensor) -> tf.Tensor:
        pixels = tf.cast(images, tf.float32) / 127.5 - 1.0  # the detector's own input range
        (feature,) = self.network(pixels, [FEATURE])
        feature -= tf.reduce_mean(feature, axis=[1, 2], keepdims=True)
        size = feature.shape[1] // GRID
        pooled = tf.nn.avg_pool2d(feature, ksize=size, strides=size, padding="VALID")
        flat = tf.reshape(pooled, [-1, GRID * GRID * feature.shape[3]])
        return tf.math.l2_normalize(flat, axis=1, epsilon=1e-6)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.encode(np.asarray(images, np.uint8)).numpy()
