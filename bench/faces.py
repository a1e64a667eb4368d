"""Synthetic face galleries for the search benchmark: identities grown around real dlib descriptors, a few photos each.

Why this distribution (each number is measured here or cited):

* **Real anchor.** The demo encoder (dlib's face-recognition ResNet, unit-length 128-d outputs)
  encodes every face of the sample photos shipped with ``@vladmandic/face-api`` (22 people, one
  photo each), as ``build-index`` would. Their mean is the centre of every synthetic face, and
  their principal axes are the first axes of the synthetic spread.
* **Between people.** Real face embeddings vary along far fewer axes than they have: 9-16
  intrinsic dimensions for 128-512-d representations (Gong, Boddeti and Jain, "On the Intrinsic
  Dimensionality of Image Representations", CVPR 2019). Identity centres are Gaussian in the
  first ``m`` principal axes with variances falling as ``i^-alpha``; ``m`` and ``alpha`` are
  chosen by simulation so that 22 draws reproduce the PCA spectrum of the 22 real descriptors
  (the fit, and its error, are reported).
* **Within a person.** dlib's same-person distances on LFW (12,797 photos of 5,467 people; a
  published precision/recall table for the ``face_recognition`` package, jackgrimes.net): half
  the same-person pairs lie below 0.45 (L2, unnormalised; 29 % below 0.40, 84 % below 0.50).
  Divided by dlib's descriptor length (1.34-1.53, 1.43 on average over the sample faces), the
  median pair is 0.31 apart on unit descriptors, a squared distance of 0.095: each photo is its
  identity's centre plus isotropic noise of total variance 0.047. The rest of the real sample's
  total variance is between people.
* **A few photos each**: 1 + Poisson(3), so 4 on average; every face is scaled to unit length,
  as the encoder's outputs are.

Queries: a new photo of a gallery identity ("enrolled": its other photos are in the gallery) or
the photo of a new identity ("unseen"). The generated gallery is checked against the real
numbers it was built from (median same-person and different-person squared distances).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIM = 128
# dlib on LFW: median same-person pair at 0.45 (unnormalised L2); mean descriptor length of the samples.
LFW_SAME_PERSON_MEDIAN = 0.45
DLIB_DESCRIPTOR_LENGTH = 1.43
WITHIN_VARIANCE = (LFW_SAME_PERSON_MEDIAN / DLIB_DESCRIPTOR_LENGTH) ** 2 / 2  # per photo: half a pair's
PHOTOS_PER_IDENTITY = 4.0
IDENTITIES_PER_CHUNK = 65_536
# The grid the identity subspace is fitted on: subspace sizes and spectrum slopes.
FIT_SUBSPACES = (8, 12, 16, 24, 32)
FIT_SLOPES = (0.0, 0.5, 1.0)


@dataclass
class IdentityModel:
    """Identity centres ~ mean + axes[:, :m] N(0, between); a photo = centre + N(0, within I); unit length."""

    mean: np.ndarray  # [D]
    axes: np.ndarray  # [D, D], orthonormal columns
    between: np.ndarray  # [D] variances (zero past the subspace)
    within: float  # per-axis variance of a photo around its identity
    subspace: int
    slope: float
    fit_error: float

    def describe(self) -> dict:
        return {
            "subspace": self.subspace,
            "slope": self.slope,
            "fit_error": round(self.fit_error, 4),
            "between_variance": round(float(self.between.sum()), 4),
            "within_variance": round(self.within * len(self.mean), 4),
        }

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, axes=self.axes, between=self.between, within=self.within, meta=json.dumps(
            {"subspace": self.subspace, "slope": self.slope, "fit_error": self.fit_error}))  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> IdentityModel:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls(data["mean"], data["axes"], data["between"], float(data["within"]), **meta)

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return (rng.standard_normal((count, len(self.mean))) * np.sqrt(self.between)) @ self.axes.T

    def photos(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        faces = self.mean + centres + rng.standard_normal(centres.shape) * math.sqrt(self.within)
        return (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)


def sample_spectrum(variances: np.ndarray, draws: int, rng: np.random.Generator, repeats: int) -> np.ndarray:
    """The mean PCA spectrum (shares of the total) of ``draws`` Gaussian samples with these variances."""
    shares = []
    for _ in range(repeats):
        sample = rng.standard_normal((draws, len(variances))) * np.sqrt(variances)
        sample -= sample.mean(axis=0)
        values = np.linalg.svd(sample, compute_uv=False)[: draws - 1] ** 2
        shares.append(values / values.sum())
    return np.mean(shares, axis=0)


def fit_identity_model(real: np.ndarray, seed: int = 0, repeats: int = 300) -> IdentityModel:
    """The identity model whose 22-draw spectrum is nearest the real descriptors' (see the module docstring)."""
    real = np.asarray(real, np.float64)
    count, dim = real.shape
    centred = real - real.mean(axis=0)
    _, values, vt = np.linalg.svd(centred, full_matrices=True)
    observed = values[: count - 1] ** 2
    observed /= observed.sum()
    total = float((centred**2).sum() / (count - 1))
    within = min(WITHIN_VARIANCE, 0.9 * total) / dim
    rng = np.random.default_rng(seed)
    best = None
    for subspace in FIT_SUBSPACES:
        for slope in FIT_SLOPES:
            between = np.zeros(dim)
            between[:subspace] = np.arange(1, subspace + 1) ** -slope
            between *= (total - within * dim) / between.sum()
            error = float(np.linalg.norm(sample_spectrum(between + within, count, rng, repeats) - observed))
            if best is None or error < best[0]:
                best = (error, subspace, slope, between)
    error, subspace, slope, between = best
    # The real principal axes first (as many as the sample has), completed by random orthonormal ones.
    axes = np.linalg.qr(np.concatenate([vt[: count - 1].T, rng.standard_normal((dim, dim - count + 1))], axis=1))[0]
    axes *= np.sign(np.einsum("ij,ij->j", axes[:, : count - 1], vt[: count - 1].T)).tolist() + [1.0] * (dim - count + 1)
    return IdentityModel(real.mean(axis=0), axes, between, within, subspace, slope, error)


@dataclass
class Gallery:
    """Where a generated gallery lies, and the queries with it."""

    faces: Path  # gallery.npy [N, D] float32
    names: list[str]
    enrolled: np.ndarray  # [Q, D] new photos of gallery identities
    unseen: np.ndarray  # [Q, D] photos of new identities


def generate_gallery(model: IdentityModel, count: int, queries: int, folder: Path, seed: int = 1) -> Gallery:
    """Write ``count`` faces (identities of 1 + Poisson(3) photos) to ``folder/gallery.npy`` chunk by chunk,
    and make ``queries`` enrolled and ``queries`` unseen query photos."""
    path = folder / "gallery.npy"
    faces = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, len(model.mean)))
    chunks = max(1, math.ceil(count / (IDENTITIES_PER_CHUNK * PHOTOS_PER_IDENTITY)))
    picked_per_chunk = math.ceil(queries / chunks)
    enrolled_centres = []
    written = 0
    chunk = 0
    while written < count:
        rng = np.random.default_rng([seed, chunk])
        centres = model.centres(IDENTITIES_PER_CHUNK, rng)
        photos = 1 + rng.poisson(PHOTOS_PER_IDENTITY - 1, IDENTITIES_PER_CHUNK)
        owner = np.repeat(np.arange(IDENTITIES_PER_CHUNK), photos)[: count - written]
        faces[written : written + len(owner)] = model.photos(centres[owner], rng)
        present = np.unique(owner)
        enrolled_centres.append(centres[rng.choice(present, min(len(present), picked_per_chunk), replace=False)])
        written += len(owner)
        chunk += 1
    faces.flush()
    del faces
    rng = np.random.default_rng([seed, 1 << 30])  # apart from every chunk's stream
    enrolled = model.photos(np.concatenate(enrolled_centres)[:queries], rng)
    unseen = model.photos(model.centres(queries, rng), rng)
    return Gallery(path, [f"id{i:08d}.jpg" for i in range(count)], enrolled, unseen)


def check_gallery(model: IdentityModel, seed: int = 7, people: int = 400) -> dict:
    """Median squared distances between photos of one person and of different people, from the model."""
    rng = np.random.default_rng(seed)
    centres = model.centres(people, rng)
    a, b = model.photos(centres, rng), model.photos(centres, rng)
    same = np.square(a - b).sum(axis=1)
    other = np.square(a - np.roll(b, 1, axis=0)).sum(axis=1)
    return {
        "same_person_median": round(float(np.median(same)), 4),
        "other_person_median": round(float(np.median(other)), 4),
    }


def exact_neighbours(faces: np.ndarray, queries: np.ndarray, k: int, rows: int = 65_536) -> np.ndarray:
    """The exact top-k (squared L2) of each query over ``faces`` (a memory map is read in chunks) [Q, k] int64.

    Candidates come from float32 products; the final order is from float64 distances of the best 4k.
    """
    keep = min(len(faces), 4 * k)
    best_index = np.zeros((len(queries), 0), np.int64)
    best_score = np.zeros((len(queries), 0), np.float32)
    q = np.asarray(queries, np.float32)
    for start in range(0, len(faces), rows):
        chunk = np.asarray(faces[start : start + rows], np.float32)
        scores = np.einsum("ij,ij->i", chunk, chunk)[None, :] - 2.0 * (q @ chunk.T)  # [Q, rows]
        if scores.shape[1] > keep:
            top = np.argpartition(scores, keep - 1, axis=1)[:, :keep]
            scores = np.take_along_axis(scores, top, axis=1)
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        index = np.concatenate([best_index, top + start], axis=1)
        score = np.concatenate([best_score, scores], axis=1)
        if score.shape[1] > keep:
            top = np.argpartition(score, keep - 1, axis=1)[:, :keep]
            index, score = np.take_along_axis(index, top, axis=1), np.take_along_axis(score, top, axis=1)
        best_index, best_score = index, score
    exact = np.square(np.asarray(faces)[best_index.ravel()].reshape(*best_index.shape, -1).astype(np.float64)
                      - q[:, None, :].astype(np.float64)).sum(axis=2)  # fmt: skip
    order = np.argsort(exact, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(best_index, order, axis=1)


def real_descriptors(cache: Path) -> np.ndarray:
    """The demo encoder's descriptors of every face of the sample photos [22, 128], encoded once and cached.

    As ``index_demo_gallery`` does: the demo servables exported into ``cache/models`` (kept), the
    photos' faces found and encoded through them on the embedded backend.
    """
    saved = cache / "sample_descriptors.npy"
    if saved.exists():
        return np.load(saved)
    import tempfile

    from app.gallery.indexing import collect_faces
    from app.modelzoo import blazeface, encoder
    from app.modelzoo.demo import _config_text, demo_pipeline, export_models, write_demo_gallery
    from app.serving.local_backend import LocalBackend

    models = cache / "models"
    export_models(models, if_missing=True, echo=lambda _line: None)
    with tempfile.TemporaryDirectory(prefix="bench-faces-") as scratch:
        config = Path(scratch) / "demo.config"
        config.write_text(_config_text({n: models / n for n in (blazeface.SERVABLE_NAME, encoder.SERVABLE_NAME)}))
        photos = write_demo_gallery(Path(scratch) / "gallery")
        with LocalBackend(config, poll_interval=0) as backend:
            found = collect_faces(photos, backend, config=demo_pipeline(), all_faces=True)
            latents = found.faces.descriptors.reshape(len(found.faces), -1)
    cache.mkdir(parents=True, exist_ok=True)
    staging = saved.with_suffix(".tmp.npy")
    np.save(staging, latents)
    staging.rename(saved)
    return latents


def model_report(model: IdentityModel, real: np.ndarray) -> dict:
    centred = real - real.mean(axis=0)
    pairs = np.square(real[:, None, :] - real[None, :, :]).sum(axis=2)[np.triu_indices(len(real), 1)]
    return {
        **model.describe(),
        "real_faces": len(real),
        "real_total_variance": round(float((centred**2).sum() / (len(real) - 1)), 4),
        "real_other_person_median": round(float(np.median(pairs)), 4),
        "lfw_same_person_median_target": round(2 * WITHIN_VARIANCE, 4),
        **check_gallery(model),
    }
