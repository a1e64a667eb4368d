"""Synthetic gallery faces: many strangers whose descriptors look like real ones, for galleries too large to photograph.

Strangers are drawn around real descriptors (the demo encoder's, of the sample photos): a Gaussian around
the real faces' mean direction, as wide as makes two strangers as far apart, in squared L2 after
normalising to unit length, as two different real people are (the median of the real faces' pairwise
distances). No stranger is made of the real faces' own deviations, so none is a near copy of a real
person: a real person is as far from the strangers as from other people, and finding them among a
hundred thousand strangers is a fair test of the encoder and the search.
"""

from __future__ import annotations

import numpy as np


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def pairwise_squared(vectors: np.ndarray) -> np.ndarray:
    """Squared L2 between every two rows (the diagonal left out)."""
    norms = (vectors**2).sum(axis=1)
    distances = norms[:, None] + norms[None, :] - 2 * vectors @ vectors.T
    return distances[~np.eye(len(vectors), dtype=bool)]


def strangers(real: np.ndarray, count: int, *, seed: int = 0, chunk: int = 262_144) -> np.ndarray:
    """``count`` unit-length float32 descriptors spread as ``real`` ones are ([n, D], n >= 2, unit length)."""
    real = np.asarray(real, np.float64).reshape(len(real), -1)
    rng = np.random.default_rng(seed)
    mean = real.mean(axis=0)
    centred = real - mean
    target = float(np.median(pairwise_squared(real)))
    scale = _calibrate(mean, centred, target, rng)
    out = np.empty((count, real.shape[1]), np.float32)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        out[start : start + size] = _draw(mean, centred, scale, size, rng)
    return out


def _draw(mean: np.ndarray, centred: np.ndarray, noise: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """The real mean direction + isotropic noise, unit length (``centred`` is not used: see the module's note)."""
    vectors = mean + noise * rng.standard_normal((size, centred.shape[1]))
    return _unit(vectors).astype(np.float32)


def _calibrate(mean: np.ndarray, centred: np.ndarray, target: float, rng: np.random.Generator) -> float:
    """The isotropic noise that makes two strangers' median squared distance the real faces' (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        sample = _draw(mean, centred, middle, 400, rng).astype(np.float64)
        if np.median(pairwise_squared(sample)) < target:
            low = middle
        else:
            high = middle
    return (low + high) / 2
