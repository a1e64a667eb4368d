"""The approximate ``latent_search_model`` servable: an inverted-file (IVF) index of a gallery, in stock TensorFlow ops.

Same contract as the exact search (``app/modelzoo/search.py``): signature ``serving_default``
takes ``target_latent`` float32 ``[B, *latent_shape]``, ``k_num`` int32 ``[]`` and, optionally,
``probes`` int32 ``[]`` (how many lists to scan; its default is stored with the version as a
SignatureDef default, so a request that leaves it out gets it) and returns ``xvals`` (squared L2,
ascending), ``indices`` int32 (the face's position in the gallery as given to the builder, times
``index_stride`` plus ``index_offset`` for a shard) and ``filenames``; ``gallery_size`` answers
``size`` and ``latent_shape``. Bad requests are refused in the graph with the exact search's
messages; a ``probes`` below 1 is refused too, and one above the number of lists scans them all.

How a query is answered:

1. **Rotate.** The query is centred and rotated by the principal axes of the training sample
   (an orthonormal rotation: distances do not change). The first ``scan_dims`` axes carry most
   of the spread between faces.
2. **Coarse step.** Its squared distance to each list's centroid (k-means, trained on a sample of
   the gallery, in those ``scan_dims`` axes) picks the ``probes`` nearest lists.
3. **Scan.** Each list is a run of fixed-size blocks of ``BLOCK_FACES`` faces (its last block
   padded, never the list to the longest one); the probed lists' blocks are gathered and scored
   from float32 values of the first ``scan_dims`` axes plus each face's stored squared length,
   kept beside them in the block, so one product gives the score.
4. **Re-rank.** Every face the scan cannot rule out is scored again exactly: those whose scan score
   is within ``SHORTLIST_SIGMAS`` standard deviations of the scan's error of the k-th best score
   (the error is what the unread axes can add; its size is known per query from the gallery's
   spread along each axis). The exact score comes from 16-bit fixed-point
   values of every axis (one scale per axis: the error per value is at most half a step,
   ``range / 131070``), and the k nearest are returned with those distances.

What a face costs: ``4 (scan_dims + 1)`` bytes (scan values and norm) + ``2 D`` bytes (re-rank values)
+ 12 bytes (re-rank norm, int64 gallery index), against ``4 D`` for float32 (+ 4, its norm) in exact
search: at D = 128 and 16 scan axes, 336 bytes against 516 (0.65 x), plus half a block of padding per
list and the file names. (The scan values were int8 codes, 4 x smaller, until a profile showed that
turning them into float32 on every query cost more than reading float32: 6-13 % of the search's time at
1M and 10M faces.)
No variable holds more than ``MAX_VARIABLE_BYTES``: large arrays are split by whole blocks, the re-rank
values by groups of whole axes.

The lists are trained once (:func:`train_ivf`) and kept: a later version of the gallery (faces
added or removed) is exported with the same training, each face going to its nearest list, and
:func:`training_advice` says when the lists should be trained again.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from threadpoolctl import threadpool_limits

from app.modelzoo.export import MAX_VARIABLE_BYTES, row_parts
from app.modelzoo.search import (
    SEARCH_SIGNATURE,
    SIZE_SIGNATURE,
    checked_request,
    gallery_arrays,
    gallery_size_answer,
    save_search_servable,
    search_answer,
)
from app.serving.layout import ExtraFile

# Faces per block of an inverted list: a list takes ceil(size / BLOCK_FACES) blocks, so on average
# half a block per list is padding, and a gathered block is one contiguous slice.
BLOCK_FACES = 32
# Rows per chunk when the builder rotates, assigns or quantises the gallery: bounded temporaries.
_CHUNK_ROWS = 65_536
_FIXED_POINT_MAX = 32_767  # the 16-bit re-rank values lie in [-32767, 32767]
# Training: faces sampled per list, and bounds on the sample and on the k-means iterations.
SAMPLE_PER_LIST = 32
_MIN_SAMPLE = 10_000
_KMEANS_ITERATIONS = 12
_TRAINING_FORMAT = 1
# The builder assigns a face to the nearest list of the ASSIGN_GROUPS groups nearest to it.
ASSIGN_GROUPS = 4
_ASSIGN_ROWS = 262_144
# Bytes of scan values scanned per step of the scan loop: 963 blocks of 32 faces x (16 axes + the norm). 2 MB
# steps took 7-20 % less time than 0.5 MB ones at 1M and 10M faces (then int8 codes); 4 and 8 MB were no faster
# (docs/benchmarks.md); the whole scan at once is several times slower.
SCAN_CHUNK_BYTES = 2 << 20
# default_probes: the share of the lists a query probes unless it asks for another count.
PROBE_SHARE = 1 / 32
# default_scan_dims: the share of the spread the scanned axes hold.
SCAN_SPREAD = 0.6
# The re-ranked shortlist: every face whose scan score is within SHORTLIST_SIGMAS standard deviations of the
# scan's error from the k-th best (at most SHORTLIST_MAX, or k: a row with more narrows its margin until they fit).
SHORTLIST_SIGMAS = 3.5
SHORTLIST_MAX = 8192
# A row over SHORTLIST_MAX narrows its margin by this many halvings (to within 1/256 of it).
SHORTLIST_BISECTIONS = 8
# training_advice: when a gallery has outgrown its lists, or they became too uneven.
GROWTH_LIMIT = 4.0
IMBALANCE_LIMIT = 3.0


def default_lists(count: int) -> int:
    """How many inverted lists a gallery of ``count`` faces gets: a power of two near 8 sqrt(count).

    Measured at 1M faces (bench/search.py --ivf --lists): 8,192 and 16,384 lists reach recall@10
    0.99 at about the same p50 (5.6 and 5.0 ms, probing 1/16 of them), where 4,096 lists of ~244
    faces scan 1.5 x the faces for it (384 lists); the coarse step over the centroids stays small
    next to the scan. At most one list per 8 faces.
    """
    if count < 1:
        raise ValueError("a gallery needs at least one face")
    lists = 2 ** round(math.log2(8.0 * math.sqrt(count)))
    return int(max(1, min(lists, count // 8 or 1)))


def default_probes(lists: int) -> int:
    """The probe count stored with a version: PROBE_SHARE of the lists, at least 8 (at most all of them).

    Measured (bench/search.py --ivf) on synthetic identities grown around real dlib descriptors; see
    docs/benchmarks.md for the recall it reaches at 1M and 10M faces.
    """
    return int(min(lists, max(8, round(PROBE_SHARE * lists))))


def default_scan_dims(spread: np.ndarray) -> int:
    """How many rotated axes the scan reads, from the spread (variance) along each principal axis, largest
    first: the fewest that hold SCAN_SPREAD of the total, rounded up to a multiple of 8, at least 16 (all
    of them for a latent that small).

    Measured at 1M faces: scanning the first 16 axes (68 % of the spread) gave the recall of scanning 32,
    at half the work, once the shortlist re-ranks 1,024 faces exactly.
    """
    spread = np.asarray(spread, np.float64)
    dim = len(spread)
    total = spread.sum()
    if total <= 0:
        return min(dim, 16)
    held = int(np.searchsorted(np.cumsum(spread) / total, SCAN_SPREAD - 1e-9) + 1)
    return int(min(dim, max(16, -(-held // 8) * 8)))


@dataclass(frozen=True)
class IvfTraining:
    """What the lists were trained to, kept so that later versions of a gallery reuse it.

    ``mean`` [D] and ``rotation`` [D, D] (orthonormal; column j is the j-th principal axis of the
    training sample) map a latent to rotated coordinates; ``centroids`` [lists, scan_dims] are the
    k-means centres of the first ``scan_dims`` rotated axes. The lists come in groups (a two-level
    k-means): the lists of group g are ``group_starts[g]:group_starts[g + 1]``, and
    ``group_centroids`` [groups, scan_dims] are the groups' centres; the builder assigns a face by
    looking only inside the groups nearest to it. ``gallery_faces`` is the size of the gallery the
    lists were trained for, ``sample_faces`` how many of its faces k-means saw, ``imbalance`` how
    uneven the sample's lists were (1.0: equal), ``mean_error`` the sample's mean squared distance
    to its centroid: training_advice compares a later gallery with these.
    """

    mean: np.ndarray
    rotation: np.ndarray
    centroids: np.ndarray
    group_centroids: np.ndarray
    group_starts: np.ndarray
    gallery_faces: int
    sample_faces: int
    imbalance: float
    mean_error: float
    seed: int

    @property
    def lists(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def scan_dims(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def to_bytes(self) -> bytes:
        """The training as an .npz file's bytes (read back with :meth:`from_bytes`)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.int64(_TRAINING_FORMAT),
            mean=self.mean,
            rotation=self.rotation,
            centroids=self.centroids,
            group_centroids=self.group_centroids,
            group_starts=self.group_starts,
            gallery_faces=np.int64(self.gallery_faces),
            sample_faces=np.int64(self.sample_faces),
            imbalance=np.float64(self.imbalance),
            mean_error=np.float64(self.mean_error),
            seed=np.int64(self.seed),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> IvfTraining:
        """Read what :meth:`to_bytes` wrote; ValueError for anything else."""
        if not data.startswith(b"PK"):
            raise ValueError("not an IVF training file: not an .npz archive")
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                if int(arrays["format"]) != _TRAINING_FORMAT:
                    raise ValueError(f"IVF training format {int(arrays['format'])}, expected {_TRAINING_FORMAT}")
                training = cls(
                    mean=arrays["mean"].astype(np.float32),
                    rotation=arrays["rotation"].astype(np.float32),
                    centroids=arrays["centroids"].astype(np.float32),
                    group_centroids=arrays["group_centroids"].astype(np.float32),
                    group_starts=arrays["group_starts"].astype(np.int64),
                    gallery_faces=int(arrays["gallery_faces"]),
                    sample_faces=int(arrays["sample_faces"]),
                    imbalance=float(arrays["imbalance"]),
                    mean_error=float(arrays["mean_error"]),
                    seed=int(arrays["seed"]),
                )
        except (OSError, KeyError, EOFError, ValueError, zipfile.BadZipFile) as exc:  # np.load's "not that file"
            raise ValueError(f"not an IVF training file: {exc}") from exc
        d, groups = training.dim, len(training.group_centroids)
        starts = training.group_starts
        if (
            training.rotation.shape != (d, d)
            or training.centroids.ndim != 2
            or training.scan_dims > d
            or training.group_centroids.shape != (groups, training.scan_dims)
            or starts.shape != (groups + 1,)
            or starts[0] != 0
            or starts[-1] != training.lists
            or np.any(np.diff(starts) < 1)
        ):
            raise ValueError("IVF training arrays do not fit together (mean, rotation, centroids and groups)")
        return training


# -- training -------------------------------------------------------------------------------------------


def _flat_finite(descriptors: np.ndarray) -> np.ndarray:
    """[N, D] float32 view of the descriptors; ValueError for an empty or non-finite array."""
    descriptors = np.asarray(descriptors)
    if descriptors.ndim < 2 or descriptors.shape[0] < 1 or math.prod(descriptors.shape[1:]) < 1:
        raise ValueError(f"descriptors must be [N, *latent_shape] with N >= 1, got shape {descriptors.shape}")
    if not np.issubdtype(descriptors.dtype, np.number) or np.iscomplexobj(descriptors):
        raise ValueError(f"descriptors must be real numbers, got dtype {descriptors.dtype}")
    flat = np.ascontiguousarray(descriptors, dtype=np.float32).reshape(descriptors.shape[0], -1)
    for start in range(0, len(flat), _CHUNK_ROWS):
        if not np.isfinite(flat[start : start + _CHUNK_ROWS]).all():
            raise ValueError("descriptors hold NaN or Inf")
    return flat


def _nearest(points: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the nearest centroid, squared distance to it) of each point, in chunks of ~64 MB of scores."""
    norms = np.einsum("ij,ij->i", centroids, centroids)
    index = np.empty(len(points), np.int64)
    distance = np.empty(len(points), np.float32)
    rows = max(256, (1 << 24) // max(1, len(centroids)))
    for start in range(0, len(points), rows):
        chunk = points[start : start + rows]
        scores = chunk @ centroids.T
        scores *= -2.0
        scores += norms
        best = np.argmin(scores, axis=1)
        index[start : start + rows] = best
        own = np.einsum("ij,ij->i", chunk, chunk)
        distance[start : start + rows] = np.maximum(scores[np.arange(len(chunk)), best] + own, 0.0)
    return index, distance


def _one_blas_thread(function):
    """Run ``function`` on one BLAS thread: its products are small and many, and BLAS threads that wait
    for each other cost more than they gain (3 x slower measured on two busy cores)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapper


@_one_blas_thread
def _kmeans(points: np.ndarray, count: int, rng: np.random.Generator, iterations: int) -> np.ndarray:
    """Lloyd's k-means (squared L2) from a random pick of points; an emptied cluster takes half of the largest."""
    centroids = points[rng.choice(len(points), count, replace=False)].astype(np.float32)
    for _ in range(iterations):
        assignment, _ = _nearest(points, centroids)
        counts = np.bincount(assignment, minlength=count)
        filled = counts > 0
        # Sums per cluster over the points sorted by cluster (np.add.at would be ~100 x slower).
        order = np.argsort(assignment, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        sums = np.add.reduceat(points[order].astype(np.float64), starts, axis=0)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
        for empty in np.flatnonzero(~filled):
            # Split the largest cluster: its centre and a slightly moved copy (as faiss does).
            largest = int(np.argmax(counts))
            nudge = 1e-4 * (np.abs(centroids[largest]) + 1e-6) * rng.choice([-1.0, 1.0], points.shape[1])
            centroids[empty] = centroids[largest] + nudge
            centroids[largest] -= nudge
            counts[empty] = counts[largest] // 2
            counts[largest] -= counts[empty]
    return centroids


def _share(total: int, weights: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``weights`` (largest remainders), at least 1 and at most ``limits`` each."""
    exact = total * weights / weights.sum()
    shares = np.clip(np.floor(exact).astype(np.int64), 1, limits)
    while shares.sum() < total:  # give one more to the share furthest below its due, while it has room
        room = shares < limits
        shares[np.flatnonzero(room)[np.argmax((exact - shares)[room])]] += 1
    while shares.sum() > total:  # the 1-minimums overshot: take from the share furthest above its due
        over = shares > 1
        shares[np.flatnonzero(over)[np.argmax((shares - exact)[over])]] -= 1
    return shares


def _imbalance(counts: np.ndarray) -> float:
    """How uneven the lists are: the faces scanned per probed list over what equal lists would give (1.0: equal)."""
    total = float(counts.sum())
    return float(len(counts) * np.square(counts, dtype=np.float64).sum() / (total * total)) if total else 1.0


def default_groups(lists: int) -> int:
    """How many groups the lists are trained in: a power of two near sqrt(lists)."""
    return int(min(lists, 2 ** round(math.log2(math.sqrt(lists)))))


def train_ivf(
    descriptors: np.ndarray,
    *,
    lists: int | None = None,
    seed: int = 0,
    sample: int | None = None,
    scan_dims: int | None = None,
    iterations: int = _KMEANS_ITERATIONS,
) -> IvfTraining:
    """Train the lists of an IVF gallery on a sample of ``descriptors`` ``[N, *latent_shape]``.

    ``lists`` defaults to :func:`default_lists` (N); ``sample`` (faces k-means sees) to
    ``SAMPLE_PER_LIST`` per list, at least 10,000, at most N; ``scan_dims`` to
    :func:`default_scan_dims`. The principal axes come from the same sample. k-means runs in two
    levels (numpy, seeded): about sqrt(lists) groups over the sample, then each group's points
    into its share of the lists, so training and assigning cost ~sqrt(lists) distances a face
    instead of ``lists``. ValueError for NaN/Inf, an empty gallery or impossible counts.
    """
    flat = _flat_finite(descriptors)
    count, dim = flat.shape
    lists = default_lists(count) if lists is None else int(lists)
    if not 1 <= lists <= count:
        raise ValueError(f"lists must be between 1 and the number of faces ({count}), got {lists}")
    if scan_dims is not None and not 1 <= scan_dims <= dim:
        raise ValueError(f"scan_dims must be between 1 and the latent size ({dim}), got {scan_dims}")
    sample = min(count, max(_MIN_SAMPLE, SAMPLE_PER_LIST * lists)) if sample is None else min(count, int(sample))
    if sample < lists:
        raise ValueError(f"a sample of {sample} faces cannot train {lists} lists")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(count, sample, replace=False)) if sample < count else np.arange(count)
    points = flat[picked].astype(np.float64)
    mean = points.mean(axis=0)
    points -= mean
    # Principal axes, largest spread first; each axis's sign fixed (largest entry positive) for reproducibility.
    eigenvalues, axes = np.linalg.eigh(points.T @ points)
    largest_first = np.argsort(eigenvalues)[::-1]
    axes = axes[:, largest_first]
    scan_dims = default_scan_dims(eigenvalues[largest_first]) if scan_dims is None else int(scan_dims)
    axes *= np.where(axes[np.argmax(np.abs(axes), axis=0), np.arange(dim)] < 0, -1.0, 1.0)
    rotated = (points @ axes[:, :scan_dims]).astype(np.float32)
    del points

    groups = default_groups(lists)
    group_centroids = _kmeans(rotated, groups, rng, iterations)
    group_of, _ = _nearest(rotated, group_centroids)
    sizes = np.bincount(group_of, minlength=groups)
    kept = np.flatnonzero(sizes)  # a group k-means left empty gets no lists
    group_centroids, sizes = group_centroids[kept], sizes[kept]
    shares = _share(lists, sizes.astype(np.float64), sizes)
    group_of = np.searchsorted(kept, group_of)
    centroids = np.concatenate(
        [_kmeans(rotated[group_of == g], int(share), rng, iterations) for g, share in enumerate(shares)]
    )
    group_starts = np.concatenate([[0], np.cumsum(shares)])
    training = IvfTraining(
        mean=mean.astype(np.float32),
        rotation=axes.astype(np.float32),
        centroids=centroids,
        group_centroids=group_centroids,
        group_starts=group_starts.astype(np.int64),
        gallery_faces=count,
        sample_faces=sample,
        imbalance=1.0,
        mean_error=0.0,
        seed=seed,
    )
    assignment, error = _assign_rotated(rotated, training)
    return dataclasses.replace(
        training,
        imbalance=_imbalance(np.bincount(assignment, minlength=lists)),
        mean_error=float(error.mean()),
    )


@_one_blas_thread
def _assign_rotated(points: np.ndarray, training: IvfTraining) -> tuple[np.ndarray, np.ndarray]:
    """(list, squared distance to its centroid) of each point [n, scan_dims]: the nearest centroid of the
    lists in the ``ASSIGN_GROUPS`` groups nearest to the point."""
    starts = training.group_starts
    groups = len(training.group_centroids)
    searched = min(groups, ASSIGN_GROUPS)
    group_distance = np.einsum("ij,ij->i", training.group_centroids, training.group_centroids) - 2.0 * (
        points @ training.group_centroids.T
    )
    nearest_groups = np.argpartition(group_distance, searched - 1, axis=1)[:, :searched] if searched < groups else None
    if nearest_groups is None:
        nearest_groups = np.broadcast_to(np.arange(groups), (len(points), groups))
    # Group by group: one distance matrix per group for every point that has it among its nearest.
    candidates = nearest_groups.ravel()
    order = np.argsort(candidates, kind="stable")
    bounds = np.searchsorted(candidates[order], np.arange(groups + 1))
    owners = order // searched  # the point of each candidate entry
    best = np.full(len(points), np.inf, np.float32)
    chosen = np.zeros(len(points), np.int64)
    for g in range(groups):
        rows = owners[bounds[g] : bounds[g + 1]]
        if len(rows) == 0:
            continue
        index, distance = _nearest(points[rows], training.centroids[starts[g] : starts[g + 1]])
        better = distance < best[rows]
        best[rows[better]] = distance[better]
        chosen[rows[better]] = starts[g] + index[better]
    return chosen, best


def _rotated_chunks(flat: np.ndarray, training: IvfTraining, rows: int = _CHUNK_ROWS):
    """(first row, rotated chunk [rows, D] float32) over the gallery: no N x D temporary is ever made."""
    for start in range(0, len(flat), rows):
        yield start, (flat[start : start + rows] - training.mean) @ training.rotation


def _assign(flat: np.ndarray, training: IvfTraining) -> tuple[np.ndarray, np.ndarray]:
    """(list, squared distance to its centroid in the scanned axes) of every face of a gallery."""
    lists = np.empty(len(flat), np.int64)
    error = np.empty(len(flat), np.float32)
    for start, rotated in _rotated_chunks(flat, training, _ASSIGN_ROWS):
        stop = start + len(rotated)
        lists[start:stop], error[start:stop] = _assign_rotated(
            np.ascontiguousarray(rotated[:, : training.scan_dims]), training
        )
    return lists, error


def assign_lists(latents: np.ndarray, training: IvfTraining) -> np.ndarray:
    """The list each face of ``latents`` [N, *latent_shape] goes to with ``training`` [N] int64, as the builder
    assigns them (the nearest centroid among the ASSIGN_GROUPS nearest groups)."""
    flat = _flat_finite(latents)
    if flat.shape[1] != training.dim:
        raise ValueError(f"the faces have {flat.shape[1]} values each but the lists were trained on {training.dim}")
    return _assign(flat, training)[0]


def training_advice(training: IvfTraining, latents: np.ndarray) -> str | None:
    """One line saying why the lists should be trained again for this gallery, or None while they fit it.

    Reasons: the gallery grew past ``GROWTH_LIMIT`` times the one they were trained for (each list
    then holds that many times the faces, and a probe scans them all); the faces fall into lists
    much more unevenly than the training sample did (an imbalance factor over ``IMBALANCE_LIMIT``:
    a probe of the big lists scans that many times the faces of an even split); or the faces lie
    on average more than twice as far from their centroids as the training sample did (the
    descriptors changed, e.g. another encoder).
    """
    flat = _flat_finite(latents)
    if flat.shape[1] != training.dim:
        return (
            f"the faces have {flat.shape[1]} values each but the lists were trained on faces of {training.dim}: "
            "train them again"
        )
    count = len(flat)
    if count > GROWTH_LIMIT * training.gallery_faces:
        return (
            f"the gallery has grown from {training.gallery_faces:,} to {count:,} faces since its "
            f"{training.lists:,} lists were trained: train them again"
        )
    lists, error = _assign(flat, training)
    imbalance = _imbalance(np.bincount(lists, minlength=training.lists))
    if imbalance > max(IMBALANCE_LIMIT, 1.5 * training.imbalance):
        return (
            f"the faces fill the lists unevenly (imbalance {imbalance:.1f}, {training.imbalance:.1f} when trained): "
            "train them again"
        )
    if training.mean_error > 0 and float(error.mean()) > 2.0 * training.mean_error:
        return (
            f"the faces lie {float(error.mean()) / training.mean_error:.1f} x farther from their lists' centroids "
            "than the training sample did (other descriptors?): train the lists again"
        )
    return None


# -- the servable ---------------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where each face goes, and the quantisers: the gallery is stored in list order, each list a run of
    whole blocks (by face slot: block * BLOCK_FACES + row); the last block is all padding, the slot that an
    unused position of a gathered list points at."""

    slot: np.ndarray  # [N] int64: each face's slot
    slots: int
    first_block: np.ndarray  # [lists] int32
    block_count: np.ndarray  # [lists] int32
    list_sizes: np.ndarray  # [lists] int64
    offset: np.ndarray  # [D] float32: rotated value = offset + fine_scale * fine value
    fine_scale: np.ndarray  # [D] float32
    spread: np.ndarray  # [D] float32: the gallery's variance along each rotated axis


def _layout(flat: np.ndarray, training: IvfTraining) -> _Layout:
    """Pass 1 over the gallery: each face's list and slot, and the range and spread of each rotated axis."""
    count, dim = flat.shape
    p = training.scan_dims
    lists = np.empty(count, np.int64)
    low = np.full(dim, np.inf, np.float32)
    high = np.full(dim, -np.inf, np.float32)
    sums = np.zeros(dim, np.float64)
    squares = np.zeros(dim, np.float64)
    for start, rotated in _rotated_chunks(flat, training, _ASSIGN_ROWS):
        lists[start : start + len(rotated)], _ = _assign_rotated(np.ascontiguousarray(rotated[:, :p]), training)
        low = np.minimum(low, rotated.min(axis=0))
        high = np.maximum(high, rotated.max(axis=0))
        sums += rotated.sum(axis=0, dtype=np.float64)
        squares += np.square(rotated, dtype=np.float64).sum(axis=0)
    spread = np.maximum(squares / count - np.square(sums / count), 0.0).astype(np.float32)
    offset = ((low.astype(np.float64) + high) / 2).astype(np.float32)
    half_range = np.maximum((high.astype(np.float64) - low) / 2, np.finfo(np.float32).tiny)
    sizes = np.bincount(lists, minlength=training.lists)
    block_count = -(-sizes // BLOCK_FACES)
    first_block = np.concatenate([[0], np.cumsum(block_count)[:-1]])
    # Each face's slot: its list's first block, then its rank inside the list (stable: gallery order).
    order = np.argsort(lists, kind="stable")
    rank = np.arange(count) - np.concatenate([[0], np.cumsum(sizes)[:-1]])[lists[order]]
    slot = np.empty(count, np.int64)
    slot[order] = first_block[lists[order]] * BLOCK_FACES + rank
    return _Layout(
        slot=slot,
        slots=(int(block_count.sum()) + 1) * BLOCK_FACES,  # + the padding block
        first_block=first_block.astype(np.int32),
        block_count=block_count.astype(np.int32),
        list_sizes=sizes,
        offset=offset,
        fine_scale=(half_range / _FIXED_POINT_MAX).astype(np.float32),
        spread=spread,
    )


class _SplitArray(tf.Module):
    """One array stored as several variables of whole blocks, none over the byte limit, gathered by row.

    The variables are made full of ``fill`` and written in place with :meth:`put`, so building a gallery
    never holds the array twice (once in numpy, once in TensorFlow).
    """

    def __init__(
        self, name: str, shape: tuple[int, ...], dtype: tf.DType, fill: float, max_bytes: int, *, rows_per_block: int
    ) -> None:
        super().__init__(name=name)
        # rows_per_block: BLOCK_FACES for arrays by face slot, 1 for arrays by block.
        block_bytes = dtype.size * math.prod(shape[1:]) * rows_per_block
        self.part_rows = max(1, max_bytes // block_bytes) * rows_per_block
        self.parts = []
        for number, start in enumerate(range(0, shape[0], self.part_rows)):
            part_shape = (min(self.part_rows, shape[0] - start), *shape[1:])
            self.parts.append(
                tf.Variable(
                    lambda s=part_shape: tf.fill(s, tf.constant(fill, dtype)), trainable=False, name=f"{name}_{number}"
                )
            )

    def put(self, rows: np.ndarray, values: np.ndarray, within: np.ndarray | None = None) -> None:
        """Write ``values`` at ``rows`` (and, for an array by block, at row ``within`` of each block), in place."""
        part = rows // self.part_rows
        for number in np.unique(part):
            mine = part == number
            index = [rows[mine] - number * self.part_rows] + ([] if within is None else [within[mine]])
            self.parts[number].scatter_nd_update(np.stack(index, axis=1), values[mine])

    def gather(self, indices: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """``rows[indices]`` cast to ``dtype``. Parts are gathered separately and stitched back in order
        (after the cast: the stitch has GPU kernels for float32 and int32, not for int8 or int16)."""
        if len(self.parts) == 1:
            return tf.cast(tf.gather(self.parts[0], indices), dtype)
        flat = tf.reshape(indices, [-1])
        part = flat // self.part_rows
        count = len(self.parts)
        local = tf.dynamic_partition(flat - part * self.part_rows, part, count)
        positions = tf.dynamic_partition(tf.range(tf.size(flat)), part, count)
        pieces = [tf.cast(tf.gather(variable, rows), dtype) for variable, rows in zip(self.parts, local, strict=True)]
        stitched = tf.dynamic_stitch(positions, pieces)
        return tf.reshape(stitched, tf.concat([tf.shape(indices), tf.shape(stitched)[1:]], axis=0))


class _SplitColumns(tf.Module):
    """An array by face slot stored as groups of whole columns, each group a :class:`_SplitArray`: as few
    groups as keep a group within the byte limit (10M faces x 128 16-bit values: two groups of 64), so a
    gather of whole rows is a gather per group and a concatenation, not a partition and stitch of rows."""

    def __init__(self, name: str, shape: tuple[int, int], dtype: tf.DType, fill: float, max_bytes: int) -> None:
        super().__init__(name=name)
        rows, width = shape
        groups = next((g for g in range(1, width + 1) if rows * -(-width // g) * dtype.size <= max_bytes), width)
        step = -(-width // groups)
        self.bounds = [(start, min(width, start + step)) for start in range(0, width, step)]
        self.groups = [
            _SplitArray(
                name if len(self.bounds) == 1 else f"{name}_columns_{number}",
                (rows, stop - start),
                dtype,
                fill,
                max_bytes,
                rows_per_block=BLOCK_FACES,
            )
            for number, (start, stop) in enumerate(self.bounds)
        ]

    def put(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Write ``values`` [n, width] at ``rows``, in place."""
        for group, (start, stop) in zip(self.groups, self.bounds, strict=True):
            group.put(rows, np.ascontiguousarray(values[:, start:stop]))

    def gather(self, indices: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
        """``rows[indices]`` [*indices.shape, width] cast to ``dtype``."""
        pieces = [group.gather(indices, dtype) for group in self.groups]
        return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=-1)


class IvfSearch(tf.Module):
    """Approximate squared-L2 top-k search over an IVF gallery held in non-trainable variables."""

    def __init__(
        self,
        latents: np.ndarray,
        filenames: Sequence[str],
        training: IvfTraining,
        *,
        probes: int | None = None,
        max_variable_bytes: int = MAX_VARIABLE_BYTES,
        index_stride: int = 1,
        index_offset: int = 0,
        name: str | None = "ivf_search",
    ) -> None:
        super().__init__(name=name)
        # As in exact search: a shard's faces are numbered position * stride + offset (shard i of n: stride n,
        # offset i), so the faces of every shard of a gallery have indices apart.
        self.index_stride, self.index_offset = int(index_stride), int(index_offset)
        flat, _, names = gallery_arrays(latents, filenames)
        if flat.shape[1] != training.dim:
            raise ValueError(
                f"the latents have {flat.shape[1]} values each but the lists were trained on {training.dim}"
            )
        self.size = int(flat.shape[0])
        self.latent_shape = tuple(int(d) for d in np.shape(latents)[1:])
        self.dim = int(flat.shape[1])
        self.lists = training.lists
        self.scan_dims = training.scan_dims
        self.default_probes = default_probes(self.lists) if probes is None else int(probes)
        if self.default_probes < 1:
            raise ValueError(f"probes must be at least 1, got {self.default_probes}")
        layout = _layout(flat, training)
        self.list_sizes = layout.list_sizes
        # The fewest lists that are sure to hold n faces: the n-th entry of the smallest lists' running sum.
        smallest_first = np.cumsum(np.sort(layout.list_sizes))
        p, blocks = self.scan_dims, layout.slots // BLOCK_FACES
        with self.name_scope:
            self.mean = tf.Variable(training.mean, trainable=False, name="mean")
            self.rotation = tf.Variable(training.rotation, trainable=False, name="rotation")
            self.offset = tf.Variable(layout.offset, trainable=False, name="offset")
            self.fine_scale = tf.Variable(layout.fine_scale, trainable=False, name="fine_scale")
            self.spread = tf.Variable(layout.spread, trainable=False, name="spread")
            # Centroids in the same centred coordinates as the scan values.
            centroids = training.centroids - layout.offset[:p]
            # Stored [scan_dims, lists], so the coarse step is a plain product (no transpose per request).
            self.centroids = tf.Variable(np.ascontiguousarray(centroids.T), trainable=False, name="centroids")
            self.centroid_norms = tf.Variable(np.square(centroids).sum(axis=1), trainable=False, name="centroid_norms")
            self.first_block = tf.Variable(layout.first_block, trainable=False, name="first_block")
            self.block_count = tf.Variable(layout.block_count, trainable=False, name="block_count")
            self.smallest_first = tf.Variable(smallest_first, trainable=False, name="smallest_lists_running_size")
            # The scan reads whole blocks ([blocks, BLOCK_FACES, ...]), the re-rank single faces ([slots, ...]).
            # Scan values: each face's first p centred rotated values, then its scan norm. Padding: a scan norm of
            # +inf (never chosen) and face -1.
            limit = max_variable_bytes
            self.scan_values = _SplitArray(
                "scan_values", (blocks, BLOCK_FACES, p + 1), tf.float32, 0, limit, rows_per_block=1
            )
            slots = layout.slots
            self.fine_values = _SplitColumns("fine_values", (slots, self.dim), tf.int16, 0, limit)
            self.fine_norms = _SplitArray("fine_norms", (slots,), tf.float32, 0, limit, rows_per_block=BLOCK_FACES)
            self.faces = _SplitArray("faces", (slots,), tf.int64, -1, limit, rows_per_block=BLOCK_FACES)
            self.padding_block = blocks - 1
            self._fill(flat, training, layout)
            del flat
            name_parts = row_parts(names, max_variable_bytes)
            self.filename_starts = [start for start, _ in name_parts]
            self.filenames = [
                tf.Variable(part, dtype=tf.string, trainable=False, name=f"filenames_{number}")
                for number, (_, part) in enumerate(name_parts)
            ]

        def search(target_latent, k_num, probes=tf.constant(self.default_probes, tf.int32)):  # noqa: B008
            # The default is a Tensor so that tf.saved_model.save writes it as the signature's default.
            return self._search(target_latent, k_num, probes)

        # autograph=False: the graph is written with explicit TF control flow, nothing for autograph to convert.
        self.search = tf.function(
            search,
            autograph=False,
            input_signature=[
                tf.TensorSpec([None, *self.latent_shape], tf.float32, name="target_latent"),
                tf.TensorSpec([], tf.int32, name="k_num"),
                tf.TensorSpec([], tf.int32, name="probes"),
            ],
        )
        self.gallery_size = tf.function(self._gallery_size, input_signature=[], autograph=False)

    def _fill(self, flat: np.ndarray, training: IvfTraining, layout: _Layout) -> None:
        """Pass 2 over the gallery: quantise each chunk of faces and write it into its slots."""
        p = self.scan_dims
        unused = np.ones(layout.slots, bool)
        unused[layout.slot] = False
        empty = np.flatnonzero(unused)
        padding = np.zeros((len(empty), p + 1), np.float32)
        padding[:, p] = np.inf
        self.scan_values.put(empty // BLOCK_FACES, padding, empty % BLOCK_FACES)
        fine_scale = layout.fine_scale.astype(np.float64)
        for start, rotated in _rotated_chunks(flat, training):
            where = layout.slot[start : start + len(rotated)]
            centred = rotated - layout.offset
            fine = np.clip(np.rint(centred / layout.fine_scale), -_FIXED_POINT_MAX, _FIXED_POINT_MAX)
            # The scan's distance is ||u - x||^2 over the scanned axes plus ||u - x||^2 over the others, of which
            # only the face's own part ||x||^2 is known ahead (u: the centred query).
            decoded = fine * fine_scale
            scan_norms = np.square(centred[:, :p], dtype=np.float64).sum(axis=1) + np.square(decoded[:, p:]).sum(axis=1)
            block, row = where // BLOCK_FACES, where % BLOCK_FACES
            self.scan_values.put(
                block, np.concatenate([centred[:, :p], scan_norms[:, None]], axis=1).astype(np.float32), row
            )
            self.fine_values.put(where, fine.astype(np.int16))
            self.fine_norms.put(where, np.square(decoded).sum(axis=1).astype(np.float32))
            self.faces.put(where, np.arange(start, start + len(rotated), dtype=np.int64))

    def signatures(self) -> dict[str, tf.types.experimental.PolymorphicFunction]:
        """The SavedModel signatures, by signature name (the search as a tf.function, so its default is saved)."""
        return {SEARCH_SIGNATURE: self.search, SIZE_SIGNATURE: self.gallery_size}

    def _shortlist(self, nearness: tf.Tensor, k_num: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
        """Positions [B, S] in ``nearness`` [B, W] (the scan's score, negated: higher is nearer) of the faces to
        re-rank exactly, -1 past a row's own count.

        The scan's score misses the product of the query and the face over the axes it does not read: an
        error of standard deviation sigma_q = 2 sqrt(sum_d u_d^2 var_d) over those axes, var_d the
        gallery's spread. Every face whose scan score is within SHORTLIST_SIGMAS
        sigma_q of the k-th best is re-ranked: a true k nearest face is missed only if the scan misjudged
        it by more than that. A query with more than SHORTLIST_MAX (or k) such faces narrows its margin
        until they fit: it keeps (nearly) the SHORTLIST_MAX best scores.
        """
        p = self.scan_dims
        sigma = 2.0 * tf.sqrt(tf.reduce_sum(tf.square(u[:, p:]) * self.spread[p:], axis=1))  # [B]
        kth = self._kth_best(nearness, k_num)  # [B]
        margin = SHORTLIST_SIGMAS * sigma
        rows = tf.shape(nearness)[0]
        cap = tf.maximum(k_num, SHORTLIST_MAX)

        def chosen_within(margin: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            # The chosen positions, row by row (as tf.where lists them), each row's count from that list (the
            # few chosen are counted, not the [B, W] flags), and the widest row.
            where = tf.cast(tf.where(nearness >= (kth - margin)[:, tf.newaxis]), tf.int32)  # [M, 2]: (row, position)
            counts = tf.math.unsorted_segment_sum(tf.ones_like(where[:, 0]), where[:, 0], rows)  # [B]
            return where, counts, tf.maximum(tf.reduce_max(counts), k_num)

        def placed(where: tf.Tensor, counts: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
            # The chosen positions of each row, left-aligned in a [B, width] matrix (-1 fills the rest): a
            # position's rank in its row is its place in the list less the count of the rows before.
            rank = tf.range(tf.shape(where)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), where[:, 0])
            return tf.scatter_nd(tf.stack([where[:, 0], rank], axis=1), where[:, 1] + 1, [rows, width]) - 1

        def best() -> tf.Tensor:  # only where ties at the k-th best score alone pass the cap
            return tf.math.top_k(nearness, k=tf.minimum(cap, tf.shape(nearness)[1]), sorted=False).indices

        def narrowed(counts: tf.Tensor) -> tf.Tensor:
            # A row over the cap keeps the widest margin that fits it, found by SHORTLIST_BISECTIONS halvings of
            # [0, margin]: a few passes of a comparison over its scores, where a top k of the cap would sort them.
            def halve(step: tf.Tensor, low: tf.Tensor, high: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
                middle = (low + high) / 2.0
                fits = tf.reduce_sum(tf.cast(nearness >= (kth - middle)[:, tf.newaxis], tf.int32), axis=1) <= cap
                return step + 1, tf.where(fits, middle, low), tf.where(fits, high, middle)

            start = (0, tf.where(counts > cap, tf.zeros_like(margin), margin), margin)
            _, low, _ = tf.while_loop(lambda step, *_: step < SHORTLIST_BISECTIONS, halve, start)
            where, counts, width = chosen_within(low)
            return tf.cond(width <= cap, lambda: placed(where, counts, width), best)

        where, counts, width = chosen_within(margin)
        return tf.cond(width <= cap, lambda: placed(where, counts, width), lambda: narrowed(counts))

    @staticmethod
    def _kth_best(nearness: tf.Tensor, k_num: tf.Tensor) -> tf.Tensor:
        """The k-th best score of each row of ``nearness`` [B, T * BLOCK_FACES] (T scanned blocks), [B].

        The k best faces of a row lie in its k blocks of best maxima (a block holding one of them has a
        maximum at least that face's score, and fewer than k blocks can beat it), so the k-th best is taken
        over those blocks' faces: a maximum over each block and a top k over T block maxima and k blocks,
        instead of a top k over every scanned face (one row is one thread of TopKV2).
        """
        per_block = tf.reshape(nearness, [tf.shape(nearness)[0], -1, BLOCK_FACES])  # [B, T, BLOCK_FACES]
        best_blocks = tf.math.top_k(
            tf.reduce_max(per_block, axis=2), k=tf.minimum(k_num, tf.shape(per_block)[1]), sorted=False
        ).indices
        candidates = tf.reshape(tf.gather(per_block, best_blocks, batch_dims=1), [tf.shape(nearness)[0], -1])
        return tf.reduce_min(tf.math.top_k(candidates, k=k_num, sorted=False).values, axis=1)

    def _scan(self, blocks: tf.Tensor, width: tf.Tensor, weighted: tf.Tensor) -> tf.Tensor:
        """Scan nearness [n, BLOCK_FACES] of ``blocks`` [n] (query b's blocks at b * width ...), from the
        query's scan axes as ``weighted`` [B, p + 1] (2 u, then -1 for the stored norm): the scan's squared
        distance less ||u||^2, negated (higher is nearer), so that top_k reads it as it is.

        The blocks go through in chunks of ``SCAN_CHUNK_BYTES`` of scan values, so the temporaries of the
        product stay small (the whole scan at once is tens of MB of them, each freshly mapped from the OS,
        and several times slower), and two chunks can run at once.
        """
        step = max(1, SCAN_CHUNK_BYTES // (BLOCK_FACES * (self.scan_dims + 1) * tf.float32.size))  # blocks per chunk
        count = tf.size(blocks)
        chunks = (count + step - 1) // step
        scores = tf.TensorArray(tf.float32, size=chunks, infer_shape=False, element_shape=[None, BLOCK_FACES])

        def scan_chunk(chunk: tf.Tensor, scores: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            where = tf.range(chunk * step, tf.minimum(count, (chunk + 1) * step))
            ids = tf.gather(blocks, where)
            values = self.scan_values.gather(ids, tf.float32)  # [c, BLOCK_FACES, p + 1]
            return chunk + 1, scores.write(chunk, tf.einsum("cfp,cp->cf", values, tf.gather(weighted, where // width)))

        _, scores = tf.while_loop(lambda chunk, _: chunk < chunks, scan_chunk, (0, scores), parallel_iterations=4)
        return scores.concat()

    def _search(self, target_latent: tf.Tensor, k_num: tf.Tensor, probes: tf.Tensor) -> dict[str, tf.Tensor]:
        target_latent, k_num = checked_request(target_latent, k_num, self.latent_shape, self.size)
        with tf.control_dependencies(
            [tf.debugging.Assert(probes >= 1, [tf.strings.format("probes {} must be at least 1", probes)])]
        ):
            probes = tf.identity(probes)
        queries = tf.reshape(target_latent, [-1, self.dim])  # [B, D]
        batch = tf.shape(queries)[0]
        p = self.scan_dims
        # 1. Rotate, then centre on the codes' offset: u is what the stored values are compared with.
        u = tf.matmul(queries - self.mean, self.rotation) - self.offset  # [B, D]
        scanned = u[:, :p]

        # 2. The nearest lists: enough of them to hold k faces whatever their sizes, and at least `probes`.
        wanted = tf.reshape(tf.cast(k_num, tf.int64), [1])
        needed = tf.searchsorted(self.smallest_first, wanted, side="left", out_type=tf.int32)[0] + 1
        probed = tf.minimum(tf.maximum(probes, needed), self.lists)
        nearer = 2.0 * tf.matmul(scanned, self.centroids) - self.centroid_norms  # [B, lists]: -distance + ||u||^2
        lists = tf.math.top_k(nearer, k=probed, sorted=False).indices  # [B, probed]

        # 3. Their blocks, one row per query, padded with the padding block to the longest row.
        # (Small int32 tables: read whole, then GatherV2, which has GPU kernels for int32; ResourceGather has not.)
        counts = tf.gather(self.block_count.value(), lists)  # [B, probed]
        ends = tf.cumsum(counts, axis=1)
        total = ends[:, -1]
        width = tf.maximum(tf.reduce_max(total), 1)  # at least one (padding) block: an empty batch still runs
        position = tf.broadcast_to(tf.range(width)[tf.newaxis, :], [batch, width])  # [B, T]
        which = tf.minimum(tf.searchsorted(ends, position, side="right", out_type=tf.int32), probed - 1)
        first = tf.gather(tf.gather(self.first_block.value(), lists), which, batch_dims=1)
        begins = tf.gather(ends - counts, which, batch_dims=1)
        blocks = tf.where(position < total[:, tf.newaxis], first + position - begins, self.padding_block)

        # The scan: the first p axes, ||u - x||^2 = ||u||^2 - 2 u . x + ||x||^2, the last term (with the other
        # axes' ||x||^2) stored per face after its values; ||u||^2 is the same for every face.
        weighted = tf.concat([2.0 * scanned, -tf.ones([batch, 1])], axis=1)
        nearness = self._scan(tf.reshape(blocks, [-1]), width, weighted)
        nearness = tf.reshape(nearness, [batch, -1])  # [B, T * BLOCK_FACES]
        best = self._shortlist(nearness, k_num, u)  # [B, S], -1 where a row has fewer
        chosen = tf.maximum(best, 0)
        slots = tf.gather(blocks, chosen // BLOCK_FACES, batch_dims=1) * BLOCK_FACES + chosen % BLOCK_FACES
        slots = tf.where(best >= 0, slots, self.padding_block * BLOCK_FACES)  # never chosen: no face there

        # 4. The exact re-rank of the shortlist from the 16-bit values; padding slots are never chosen.
        # ||u - x||^2 = ||u||^2 - 2 (u s) . v + ||x||^2 with x = v s the decoded 16-bit values v, ||x||^2 stored:
        # one product over the shortlist's values. Float32 cancellation costs ~1e-7 of ||u||^2, far below the
        # fixed-point step's error.
        values = self.fine_values.gather(slots, tf.float32)  # [B, S, D]
        dots = tf.einsum("bsd,bd->bs", values, u * self.fine_scale)
        exact = (
            tf.reduce_sum(tf.square(u), axis=1, keepdims=True) - 2.0 * dots + self.fine_norms.gather(slots, tf.float32)
        )
        exact = tf.maximum(exact, 0.0)
        faces = self.faces.gather(slots, tf.int64)
        exact = tf.where(faces >= 0, exact, np.inf)
        nearest = tf.math.top_k(-exact, k=k_num, sorted=True)
        positions = tf.cast(tf.gather(faces, nearest.indices, batch_dims=1), tf.int32)
        return search_answer(self, -nearest.values, positions)

    def _gallery_size(self) -> dict[str, tf.Tensor]:
        return gallery_size_answer(self)


def export_ivf_search_model(
    version_dir: Path,
    latents: np.ndarray,
    filenames: Sequence[str],
    training: IvfTraining,
    *,
    probes: int | None = None,
    extra_files: Mapping[str, ExtraFile] | None = None,
    replace: bool = False,
    max_variable_bytes: int = MAX_VARIABLE_BYTES,
    index_stride: int = 1,
    index_offset: int = 0,
) -> Path:
    """Write a ``latent_search_model`` version searching ``latents`` with the lists of ``training``.

    Each face goes to its nearest list of ``training`` (so a gallery with faces added or removed
    reuses the training of an earlier version). ``probes`` is the probe count stored as the
    signature's default (:func:`default_probes` of the list count if None). Validation,
    warmup records (a search for the first face with the default probes, and ``gallery_size``),
    ``extra_files`` (written into assets.extra/ before the version is renamed into place), ``replace``
    and the face numbering ``index_stride``/``index_offset`` (a face's index is its position * stride
    + offset) are as for the exact search. Returns ``version_dir``.
    """
    module = IvfSearch(
        latents,
        filenames,
        training,
        probes=probes,
        max_variable_bytes=max_variable_bytes,
        index_stride=index_stride,
        index_offset=index_offset,
    )
    return save_search_servable(module, version_dir, latents, extra_files=extra_files, replace=replace)
