"""Gallery indexing: a folder of photos -> face crops -> latents (via a backend) -> a new search servable version."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import GatewayError
from app.images import crop_face, decode_image, encode_jpeg, model_input, resize
from app.modelzoo.export import next_version
from app.modelzoo.search import export_search_model
from app.pipeline import Photo, Pipeline
from app.serving.base import Backend
from app.stages import ENCODE, Stage
from app.thumbnails import THUMBNAIL_INDEX, thumbnail_name

GALLERY_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
THUMBNAIL_SIZE = 96
DEFAULT_THRESHOLD = 0.7


class EmptyGallery(ValueError):
    """Nothing in the folder could be indexed."""


@dataclass
class IndexReport:
    """What build_index did: the files indexed and, with reasons, those it could not use."""

    indexed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    version_dir: Path | None = None


def gallery_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos, other files) under folder, each in sorted order; hidden files and folders are ignored."""
    photos, others = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (photos if path.suffix.lower() in GALLERY_SUFFIXES else others).append(path)
    return photos, others


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def encode_faces(
    backend: Backend,
    faces: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    stage: Stage = ENCODE,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Latents of face crops [N, *latent_shape], encoded in batches (one at a time if the encoder takes batch 1)."""
    spec = backend.metadata(stage.ref()).inputs[stage.inputs["image"]]
    if spec.shape is not None and spec.shape[0] is not None:
        batch_size = int(spec.shape[0])
    latents = []
    for batch in _batches(faces, batch_size):
        out = backend.predict(stage.ref(), {stage.inputs["image"]: model_input(batch, spec, stage.value_range)})
        latents.append(np.asarray(out[stage.outputs["latent"]], dtype=np.float32))
        if on_batch is not None:
            on_batch(len(batch))
    return np.concatenate(latents)


def build_index(
    gallery_dir: Path,
    backend: Backend,
    search_base_path: Path,
    *,
    whole_image: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    batch_size: int = 16,
    version: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> IndexReport:
    """Index every photo of a folder and write a new latent_search_model version under search_base_path.

    Photos are taken in sorted order, so the same folder gives the same index. Each is
    decoded upright, its best face cropped (or the whole photo with ``whole_image``),
    encoded through ``backend``, and stored with its path relative to the folder and a
    thumbnail. Files that cannot be read or show no face are reported, not fatal; a
    folder with nothing usable raises EmptyGallery.
    """
    gallery_dir = Path(gallery_dir)
    if not gallery_dir.is_dir():
        raise EmptyGallery(f"{gallery_dir} is not a folder")
    photos, others = gallery_files(gallery_dir)
    report = IndexReport(skipped=[p.relative_to(gallery_dir).as_posix() for p in others])
    faces: list[np.ndarray] = []
    detector = Pipeline(backend, threshold=threshold)
    for path in photos:
        name = path.relative_to(gallery_dir).as_posix()
        if progress is not None:
            progress("detect", 1)
        try:
            image = decode_image(path.read_bytes())
        except (GatewayError, OSError) as exc:
            report.unreadable.append((name, getattr(exc, "message", str(exc))))
            continue
        if whole_image:
            faces.append(image)
        else:
            found, _ = detector.detect_faces(Photo(image, (image.shape[1], image.shape[0])))
            if not found:
                report.no_face.append(name)
                continue
            faces.append(crop_face(image, found[0].box))
        report.indexed.append(name)
    if not faces:
        raise EmptyGallery(
            f"no photo in {gallery_dir} could be indexed ({len(photos)} photos: "
            f"{len(report.unreadable)} unreadable, {len(report.no_face)} without a face; "
            f"{len(others)} other files skipped)"
        )

    def on_batch(count: int) -> None:
        if progress is not None:
            progress("encode", count)

    latents = encode_faces(backend, faces, batch_size=batch_size, on_batch=on_batch)
    thumbnails = {
        thumbnail_name(i): encode_jpeg(resize(face, (THUMBNAIL_SIZE, THUMBNAIL_SIZE)), quality=80)
        for i, face in enumerate(faces)
    }
    # The gateway serves a thumbnail only for a name listed here, by its position.
    thumbnails[THUMBNAIL_INDEX] = json.dumps({"files": report.indexed}, ensure_ascii=False).encode("utf-8")
    search_base_path = Path(search_base_path)
    target = search_base_path / str(version if version is not None else next_version(search_base_path))
    report.version_dir = export_search_model(target, latents, report.indexed, extra_files=thumbnails)
    return report


def describe(report: IndexReport) -> Iterable[str]:
    """Lines a person reads after build-index."""
    yield f"indexed {len(report.indexed)} faces into {report.version_dir}"
    for name, reason in report.unreadable:
        yield f"unreadable: {name}: {reason}"
    for name in report.no_face:
        yield f"no face found: {name}"
    for name in report.skipped:
        yield f"skipped (not {', '.join(GALLERY_SUFFIXES)}): {name}"
