"""Search servables loaded the way TF Serving loads them, and the numpy references their answers are held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo.search import SEARCH_SIGNATURE


class LoadedSearch:
    """A SavedModel loaded like TF Serving's SavedModelBundle: TF1 Session, "serve" tag, run by tensor names.

    Inputs a call leaves out are not fed, so a signature default (a placeholder with a default) applies.
    """

    def __init__(self, path: Path) -> None:
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], str(path))

    def run(self, signature: str = SEARCH_SIGNATURE, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        sig = self.meta_graph.signature_def[signature]
        feed = {sig.inputs[alias].name: value for alias, value in inputs.items()}
        return self.session.run({alias: info.name for alias, info in sig.outputs.items()}, feed_dict=feed)

    def search(self, target_latent: np.ndarray, k: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(target_latent=np.asarray(target_latent, np.float32), k_num=np.array(k, np.int32), **extra)

    def close(self) -> None:
        self.session.close()


def squared_distances(gallery: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Reference [B, N] squared L2 distances, in float64."""
    flat = gallery.reshape(len(gallery), -1).astype(np.float64)
    q = queries.reshape(len(queries), -1).astype(np.float64)
    return (flat * flat).sum(1)[None, :] - 2.0 * q @ flat.T + (q * q).sum(1)[:, None]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (the exact top k) that ``found`` (another top k) also holds."""
    return float(
        np.mean([len(set(a.tolist()) & set(b.tolist())) / truth.shape[1] for a, b in zip(found, truth, strict=True)])
    )


def clustered_faces(count: int, dim: int, clusters: int, seed: int, spread: float = 0.15) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (an identity-like gallery), float32 [count, dim]."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    points = centres[rng.integers(0, clusters, count)] + spread * rng.standard_normal((count, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def filenames_for(count: int) -> list[str]:
    return [f"faces/person_{i:05d}.jpg" for i in range(count)]
