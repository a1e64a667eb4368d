"""The ``latent_search_model`` servable: exact top-k nearest gallery faces (squared L2) to a query latent.

The gallery's latents and filenames are variables of the SavedModel, so a new
gallery is a new servable version that TF Serving picks up without a restart,
and no request reads a file.

Signature ``serving_default``: ``target_latent`` float32 ``[B, *latent_shape]``
(B >= 0; the gateway sends B = 1) and ``k_num`` int32 ``[]`` -> ``xvals`` float32
``[B, k]`` (squared L2 distances, ascending), ``indices`` int32 ``[B, k]`` and
``filenames`` string ``[B, k]``. A k_num below 1 or above the gallery size, a
query of the wrong latent shape, or a NaN/Inf query is refused inside the graph
with INVALID_ARGUMENT and a message a person can read.

Signature ``gallery_size``: no inputs -> ``size`` int64 ``[]`` (number of gallery
faces) and ``latent_shape`` int64 ``[rank]``, so the gateway can refuse a k larger
than the gallery (400) without calling the search.

Distances are ``||g||^2 - 2 g.q + ||q||^2`` with ``||g||^2`` precomputed at export:
one matrix product reads the ``[N, D]`` gallery once per call (for the whole batch),
which makes a query about as fast as streaming the matrix through memory, and no
``[N, D]`` temporary (``latents - query``) is ever made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo.export import save_servable, warmup_log

SERVABLE_NAME = "latent_search_model"
SEARCH_SIGNATURE = "serving_default"
SIZE_SIGNATURE = "gallery_size"
WARMUP_K = 5
# Rows per block when the squared norms are computed in float64 at export: ~32 MB at D = 4096,
# so validating a 1.6 GB gallery never doubles it in memory.
_NORM_BLOCK_ROWS = 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _gallery_arrays(latents: np.ndarray, filenames: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (latents [N, D] float32, squared norms [N] float32, filenames [N] bytes objects).

    Raises ValueError for an empty gallery, a latent with no values, a count mismatch,
    a filename that is not a string, or values that are not finite (or whose squared
    norm does not fit float32, which would make every distance to it infinite).
    """
    latents = np.asarray(latents)
    if latents.ndim < 2:
        raise ValueError(f"latents must be [N, *latent_shape] with at least one latent dimension, got {latents.shape}")
    count = latents.shape[0]
    if count < 1:
        raise ValueError("the gallery is empty: a search model needs at least one face")
    if math.prod(latents.shape[1:]) < 1:
        raise ValueError(f"each latent must hold at least one value, got latent shape {latents.shape[1:]}")
    if not np.issubdtype(latents.dtype, np.number) or np.iscomplexobj(latents):
        raise ValueError(f"latents must be real numbers, got dtype {latents.dtype}")
    if len(filenames) != count:
        raise ValueError(f"{len(filenames)} filenames for {count} latents: there must be one filename per latent")
    names = np.empty(count, dtype=object)
    for i, name in enumerate(filenames):
        if not isinstance(name, str):
            raise ValueError(f"filename {i} is {type(name).__name__}, not str")
        names[i] = name.encode("utf-8")

    # A view, not a copy, when the caller already hands float32 in C order (the common case).
    flat = np.ascontiguousarray(latents, dtype=np.float32).reshape(count, -1)
    norms = np.empty(count, dtype=np.float64)
    for start in range(0, count, _NORM_BLOCK_ROWS):
        block = flat[start : start + _NORM_BLOCK_ROWS].astype(np.float64)
        norms[start : start + _NORM_BLOCK_ROWS] = np.einsum("ij,ij->i", block, block)
    # NaN and Inf anywhere in a row propagate into its float64 norm: one check over N numbers, no N x D mask.
    bad = ~np.isfinite(norms) | (norms > _FLOAT32_MAX)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"latent {first} ({filenames[first]!r}) holds NaN/Inf or values too large for float32 distances "
            f"({int(bad.sum())} such latents)"
        )
    return flat, norms.astype(np.float32), names


class LatentSearch(tf.Module):
    """Exact squared-L2 top-k search over a gallery held in non-trainable variables."""

    def __init__(self, latents: np.ndarray, filenames: Sequence[str], name: str | None = "latent_search") -> None:
        super().__init__(name=name)
        flat, norms, names = _gallery_arrays(latents, filenames)
        self.size = int(flat.shape[0])
        self.latent_shape = tuple(int(d) for d in np.shape(latents)[1:])
        self.dim = int(flat.shape[1])
        with self.name_scope:
            self.latents = tf.Variable(flat, trainable=False, name="latents")
            self.squared_norms = tf.Variable(norms, trainable=False, name="squared_norms")
            self.filenames = tf.Variable(names, dtype=tf.string, trainable=False, name="filenames")
        # The signatures depend on the gallery's latent shape, so they are built per instance.
        self.search = tf.function(
            self._search,
            input_signature=[
                tf.TensorSpec([None, *self.latent_shape], tf.float32, name="target_latent"),
                tf.TensorSpec([], tf.int32, name="k_num"),
            ],
        )
        self.gallery_size = tf.function(self._gallery_size, input_signature=[])

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The SavedModel signatures, by signature name."""
        return {
            SEARCH_SIGNATURE: self.search.get_concrete_function(),
            SIZE_SIGNATURE: self.gallery_size.get_concrete_function(),
        }

    def _checked(self, target_latent: tf.Tensor, k_num: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The inputs, released only after the request has been validated.

        TF Serving does not check a request's shapes against the signature, so the graph
        does: a wrong latent shape would otherwise be reshaped into a wrong answer.
        """
        expected = ",".join(str(d) for d in self.latent_shape)
        actual = tf.strings.reduce_join(tf.strings.as_string(tf.shape(target_latent)[1:]), separator=",")
        checks = [
            tf.debugging.Assert(
                tf.equal(actual, expected),
                # Assert prints string data C-escaped, so the message avoids quotes.
                [
                    tf.strings.join(
                        [
                            "target_latent has latent shape [",
                            actual,
                            f"] but the gallery latents have shape [{expected}]",
                        ]
                    )
                ],
            ),
            tf.debugging.Assert(k_num >= 1, [tf.strings.format("k_num {} must be at least 1", k_num)]),
            tf.debugging.Assert(
                k_num <= self.size,
                [tf.strings.format(f"k_num {{}} is larger than the gallery ({self.size} faces)", k_num)],
            ),
        ]
        with tf.control_dependencies(checks):
            target_latent = tf.debugging.check_numerics(target_latent, "target_latent holds NaN or Inf")
            return target_latent, tf.identity(k_num)

    def _search(self, target_latent: tf.Tensor, k_num: tf.Tensor) -> dict[str, tf.Tensor]:
        target_latent, k_num = self._checked(target_latent, k_num)
        queries = tf.reshape(target_latent, [-1, self.dim])  # [B, D]
        # Read each variable once: on CPU the read shares the variable's buffer, it copies nothing.
        gallery = self.latents.value()  # [N, D]
        # One pass over the gallery for the whole batch; [N, B] is tiny next to [N, D].
        dots = tf.matmul(gallery, queries, transpose_b=True)
        # Rank by 2 g.q - ||g||^2, i.e. by minus the distance without the query's constant ||q||^2,
        # which is added back to the k winners only.
        scores = 2.0 * tf.transpose(dots) - self.squared_norms.value()[tf.newaxis, :]  # [B, N]
        best = tf.math.top_k(scores, k=k_num, sorted=True)
        query_norms = tf.reduce_sum(tf.square(queries), axis=1, keepdims=True)  # [B, 1]
        # Float32 cancellation can leave a true zero (the query is a gallery face) slightly negative.
        distances = tf.maximum(query_norms - best.values, 0.0)
        return {
            "xvals": distances,
            "indices": best.indices,
            "filenames": tf.gather(self.filenames.value(), best.indices),
        }

    def _gallery_size(self) -> dict[str, tf.Tensor]:
        # The variable's shape (no read), so the answer is the gallery that was actually restored.
        return {
            "size": tf.shape(self.squared_norms, out_type=tf.int64)[0],
            "latent_shape": tf.constant(self.latent_shape, dtype=tf.int64, shape=[len(self.latent_shape)]),
        }


def export_search_model(
    version_dir: Path,
    latents: np.ndarray,
    filenames: Sequence[str],
    *,
    extra_files: Mapping[str, bytes] | None = None,
    replace: bool = False,
) -> Path:
    """Write a ``latent_search_model`` version for a gallery: ``latents`` ``[N, *latent_shape]``, one filename each.

    Latents are cast to float32 and validated (at least one face, finite values, one
    filename per latent; ValueError otherwise). Warmup records replay a search for the
    first gallery face (k = min(5, N)) and a ``gallery_size`` call when the version
    loads. ``extra_files`` (e.g. thumbnails) go under assets.extra/. Returns ``version_dir``.
    """
    module = LatentSearch(latents, filenames)
    first = np.ascontiguousarray(np.asarray(latents)[:1], dtype=np.float32)
    warmup = [
        warmup_log(SERVABLE_NAME, {"target_latent": first, "k_num": np.array(min(WARMUP_K, module.size), np.int32)}),
        warmup_log(SERVABLE_NAME, {}, signature=SIZE_SIGNATURE),
    ]
    return save_servable(
        module, Path(version_dir), module.signatures(), warmup=warmup, extra_files=extra_files, replace=replace
    )
