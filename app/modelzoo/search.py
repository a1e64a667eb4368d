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
``[N, D]`` temporary (``latents - query``) is ever made. The top k is found in two
steps that read the ``[N, B]`` scores once: the best score of each block of
``BLOCK_ROWS`` gallery faces, then an exact top k among the k best blocks (the k best
faces can only lie there). The gallery is stored padded to whole blocks with rows
that score minus infinity, so they are never chosen.

No variable holds more than ``MAX_VARIABLE_BYTES`` (2 GiB, the tensor-proto limit): a larger
gallery is stored as several variables of whole blocks, each multiplied by the queries on its
own; only their ``[rows, B]`` scores are joined. The file names are split the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from app.modelzoo.export import MAX_VARIABLE_BYTES, gather_from_parts, row_parts, save_servable, warmup_log
from app.serving.layout import ExtraFile

SERVABLE_NAME = "latent_search_model"
SEARCH_SIGNATURE = "serving_default"
SIZE_SIGNATURE = "gallery_size"
WARMUP_K = 5
# Gallery faces per block of the two-step top k: the [N/BLOCK_ROWS, B] block maxima are small, and the
# k blocks gathered for the exact step hold k * BLOCK_ROWS scores per query.
BLOCK_ROWS = 1024
# Rows per block when the squared norms are computed in float64 at export: ~32 MB at D = 4096,
# so validating a 1.6 GB gallery never doubles it in memory.
_NORM_BLOCK_ROWS = 1024
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def gallery_arrays(latents: np.ndarray, filenames: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def checked_request(
    target_latent: tf.Tensor, k_num: tf.Tensor, latent_shape: Sequence[int], size: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """A search request's inputs, released only after they have been validated in the graph.

    TF Serving does not check a request's shapes against the signature, so the graph
    does: a wrong latent shape would otherwise be reshaped into a wrong answer. Every
    search kind refuses the same requests with the same messages.
    """
    expected = ",".join(str(d) for d in latent_shape)
    actual = tf.strings.reduce_join(tf.strings.as_string(tf.shape(target_latent)[1:]), separator=",")
    checks = [
        tf.debugging.Assert(
            tf.equal(actual, expected),
            # Assert prints string data C-escaped, so the message avoids quotes.
            [
                tf.strings.join(
                    ["target_latent has latent shape [", actual, f"] but the gallery latents have shape [{expected}]"]
                )
            ],
        ),
        tf.debugging.Assert(k_num >= 1, [tf.strings.format("k_num {} must be at least 1", k_num)]),
        tf.debugging.Assert(
            k_num <= size, [tf.strings.format(f"k_num {{}} is larger than the gallery ({size} faces)", k_num)]
        ),
    ]
    with tf.control_dependencies(checks):
        target_latent = tf.debugging.check_numerics(target_latent, "target_latent holds NaN or Inf")
        return target_latent, tf.identity(k_num)


class LatentSearch(tf.Module):
    """Exact squared-L2 top-k search over a gallery held in non-trainable variables."""

    def __init__(
        self,
        latents: np.ndarray,
        filenames: Sequence[str],
        name: str | None = "latent_search",
        *,
        max_variable_bytes: int = MAX_VARIABLE_BYTES,
        index_stride: int = 1,
        index_offset: int = 0,
    ) -> None:
        super().__init__(name=name)
        # A shard's faces are numbered position * stride + offset (shard i of n: stride n, offset i), so the faces of
        # every shard of a gallery have indices apart, whatever the other shards hold.
        self.index_stride, self.index_offset = int(index_stride), int(index_offset)
        flat, norms, names = gallery_arrays(latents, filenames)
        self.size = int(flat.shape[0])
        self.latent_shape = tuple(int(d) for d in np.shape(latents)[1:])
        self.dim = int(flat.shape[1])
        self.blocks = -(-self.size // BLOCK_ROWS)
        # Each part is a whole number of blocks (at least one), so a block never straddles two variables.
        block_bytes = BLOCK_ROWS * (self.dim + 1) * 4
        blocks_per_part = max(1, max_variable_bytes // block_bytes)
        self.part_rows = blocks_per_part * BLOCK_ROWS
        parts = []
        with self.name_scope:
            for number, start in enumerate(range(0, self.blocks * BLOCK_ROWS, self.part_rows)):
                stop = min(start + self.part_rows, self.blocks * BLOCK_ROWS)
                # Each row is the latent followed by minus its squared norm, so that one matrix product with
                # [2q, 1] gives the score 2 g.q - ||g||^2 directly (no pass over the scores to subtract norms).
                # Rows past the gallery (padding to a whole block) are zero latents with an infinite squared
                # norm: a score of minus infinity for every query.
                scored = np.zeros((stop - start, self.dim + 1), np.float32)
                real = max(0, min(stop, self.size) - start)
                scored[:real, : self.dim] = flat[start : start + real]
                scored[:real, self.dim] = -norms[start : start + real]
                scored[real:, self.dim] = -np.inf
                parts.append(tf.Variable(scored, trainable=False, name=f"latents_and_norms_{number}"))
                del scored
            self.latents = parts
            name_parts = row_parts(names, max_variable_bytes)
            self.filename_starts = [start for start, _ in name_parts]
            self.filenames = [
                tf.Variable(part, dtype=tf.string, trainable=False, name=f"filenames_{number}")
                for number, (_, part) in enumerate(name_parts)
            ]
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

    def _search(self, target_latent: tf.Tensor, k_num: tf.Tensor) -> dict[str, tf.Tensor]:
        target_latent, k_num = checked_request(target_latent, k_num, self.latent_shape, self.size)
        queries = tf.reshape(target_latent, [-1, self.dim])  # [B, D]
        batch = tf.shape(queries)[0]
        # One pass over the gallery for the whole batch. Faces are ranked by 2 g.q - ||g||^2, i.e. by
        # minus the distance without the query's constant ||q||^2, which is added back to the k winners;
        # [g, -||g||^2] . [2q, 1] is that score. [N', B] is tiny next to [N', D] and needs no transpose.
        # Each part is read once: on CPU the read shares the variable's buffer, it copies nothing.
        extended = tf.concat([2.0 * queries, tf.ones([batch, 1], queries.dtype)], axis=1)
        part_scores = [tf.matmul(part.value(), extended, transpose_b=True) for part in self.latents]
        scores = part_scores[0] if len(part_scores) == 1 else tf.concat(part_scores, axis=0)  # [N', B]
        blocks = tf.reshape(scores, [self.blocks, BLOCK_ROWS, batch])
        # Step 1: each block's best score per query, and the k best blocks (fewer if there are fewer).
        block_best = tf.transpose(tf.reduce_max(blocks, axis=1))  # [B, blocks]
        chosen = tf.math.top_k(block_best, k=tf.minimum(k_num, self.blocks), sorted=False).indices  # [B, kb]
        # Step 2: the exact top k among the chosen blocks' scores. The gather takes every query's column
        # of each chosen block ([B, kb, BLOCK_ROWS, B], small); the mask keeps each query's own. (A select,
        # not a product with a one-hot: a padding row's minus infinity times zero would be NaN.)
        own = tf.eye(batch, dtype=tf.bool)[:, tf.newaxis, tf.newaxis, :]
        candidates = tf.reduce_sum(tf.where(own, tf.gather(blocks, chosen), 0.0), axis=-1)  # [B, kb, BLOCK_ROWS]
        best = tf.math.top_k(tf.reshape(candidates, [batch, -1]), k=k_num, sorted=True)
        block_of = tf.gather(chosen, best.indices // BLOCK_ROWS, batch_dims=1)
        positions = block_of * BLOCK_ROWS + best.indices % BLOCK_ROWS
        query_norms = tf.reduce_sum(tf.square(queries), axis=1, keepdims=True)  # [B, 1]
        # Float32 cancellation can leave a true zero (the query is a gallery face) slightly negative.
        return search_answer(self, tf.maximum(query_norms - best.values, 0.0), positions)

    def _gallery_size(self) -> dict[str, tf.Tensor]:
        return gallery_size_answer(self)


def search_answer(module: tf.Module, distances: tf.Tensor, positions: tf.Tensor) -> dict[str, tf.Tensor]:
    """The search signature's outputs for the faces at ``positions`` of ``module``'s gallery (exact or IVF):
    their distances, their indices (position * index_stride + index_offset) and their file names."""
    stride, offset = module.index_stride, module.index_offset
    return {
        "xvals": distances,
        "indices": positions * stride + offset if stride != 1 else positions,
        "filenames": gather_from_parts(module.filenames, module.filename_starts, positions),
    }


def gallery_size_answer(module: tf.Module) -> dict[str, tf.Tensor]:
    """The gallery_size signature's outputs for ``module``'s gallery (exact or IVF)."""
    # The filename variables' shapes (no read; the faces are padded to whole blocks, the names are
    # not), so the answer is the gallery that was actually restored.
    return {
        "size": tf.add_n([tf.shape(part, out_type=tf.int64)[0] for part in module.filenames]),
        "latent_shape": tf.constant(module.latent_shape, dtype=tf.int64, shape=[len(module.latent_shape)]),
    }


def save_search_servable(
    module: tf.Module,
    version_dir: Path,
    latents: np.ndarray,
    *,
    extra_files: Mapping[str, ExtraFile] | None,
    replace: bool,
) -> Path:
    """Save a search module (exact or IVF) as a version, with warmup records that replay a search for the first
    gallery face (k = min(WARMUP_K, N)) and a ``gallery_size`` call."""
    first = np.ascontiguousarray(np.asarray(latents)[:1], dtype=np.float32)
    warmup = [
        warmup_log(SERVABLE_NAME, {"target_latent": first, "k_num": np.array(min(WARMUP_K, module.size), np.int32)}),
        warmup_log(SERVABLE_NAME, {}, signature=SIZE_SIGNATURE),
    ]
    return save_servable(
        module, Path(version_dir), module.signatures(), warmup=warmup, extra_files=extra_files, replace=replace
    )


def export_search_model(
    version_dir: Path,
    latents: np.ndarray,
    filenames: Sequence[str],
    *,
    extra_files: Mapping[str, ExtraFile] | None = None,
    replace: bool = False,
    max_variable_bytes: int = MAX_VARIABLE_BYTES,
    index_stride: int = 1,
    index_offset: int = 0,
) -> Path:
    """Write a ``latent_search_model`` version for a gallery: ``latents`` ``[N, *latent_shape]``, one filename each.

    Latents are cast to float32 and validated (at least one face, finite values, one
    filename per latent; ValueError otherwise). Warmup records replay a search for the
    first gallery face (k = min(5, N)) and a ``gallery_size`` call when the version
    loads. ``extra_files`` (e.g. thumbnails) go under assets.extra/. No variable holds more than
    ``max_variable_bytes`` (tests lower it to see a gallery split). Returns ``version_dir``.
    """
    module = LatentSearch(
        latents, filenames, max_variable_bytes=max_variable_bytes, index_stride=index_stride, index_offset=index_offset
    )
    return save_search_servable(module, version_dir, latents, extra_files=extra_files, replace=replace)
