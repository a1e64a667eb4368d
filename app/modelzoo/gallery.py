"""Gallery indexing: a folder of photos -> faces -> latents (via a backend) -> a new search servable version.

Faces are found and fed to the encoder exactly as the gateway does for an upload
(``Pipeline.detect_faces`` then ``Pipeline.face_crop`` for the encode stage: with
the demo models, the detector's keypoints and an aligned chip), so a gallery face
and the same photo uploaded later land on the same latent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import GatewayError, PayloadTooLarge, UnsupportedMediaType
from app.images import (
    ACCEPTED_FORMATS,
    FACE_CROP_SCALE,
    crop_face,
    decode_image,
    encode_jpeg,
    resize,
)
from app.modelzoo.search import export_search_model
from app.pipeline import Face, Photo, Pipeline
from app.pipeline_config import DEFAULT_PIPELINE, EncodeStage, PipelineConfig
from app.serving.base import Backend
from app.serving.layout import next_version
from app.thumbnails import THUMBNAIL_INDEX, thumbnail_name

# Every file name ending Pillow reads as one of the formats the gateway accepts (.jpg, .png, .webp, .bmp, ...).
GALLERY_SUFFIXES = tuple(
    sorted(suffix for suffix, kind in Image.registered_extensions().items() if kind in ACCEPTED_FORMATS)
)
_FORMATS = [{"WEBP": "WebP"}.get(kind, kind) for kind in ACCEPTED_FORMATS]
FORMAT_NAMES = f"{', '.join(_FORMATS[:-1])} or {_FORMATS[-1]}"  # "JPEG, PNG, WebP or BMP"
THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 85
# A face's entry name with --all-faces: "<photo>#<n>", faces numbered from the left.
FACE_SEPARATOR = "#"


class EmptyGallery(ValueError):
    """Nothing in the folder could be indexed."""


@dataclass
class IndexReport:
    """What build_index did: the faces indexed (by entry name) and, with reasons, the files it could not use."""

    indexed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    photos: int = 0
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


def _unreadable_reason(exc: GatewayError | OSError) -> str:
    """Why a gallery file could not be read, in a person's words rather than HTTP's."""
    if isinstance(exc, UnsupportedMediaType):
        return f"not a {FORMAT_NAMES} image"
    if isinstance(exc, PayloadTooLarge):
        return exc.message.replace("the image", "the photo")
    return getattr(exc, "message", None) or str(exc)


def _whole_picture(image: np.ndarray, stage: EncodeStage) -> np.ndarray:
    """What the encoder gets of a picture that is already a face: an aligned-style chip framed so nothing is cut,
    or the picture itself for a box-fed encoder (the crop the pipeline would make of a face filling it)."""
    if stage.crop == "aligned":
        from app.alignment import whole_image_chip

        return whole_image_chip(image)
    return image


def _thumbnail(image: np.ndarray, face: Face | None) -> bytes:
    """A colour JPEG of the face as the result page shows it (the square box crop), or of the whole picture."""
    picture = image if face is None else crop_face(image, face.box, FACE_CROP_SCALE)
    height, width = picture.shape[:2]
    scale = THUMBNAIL_SIZE / max(height, width)
    picture = resize(picture, (max(1, round(height * scale)), max(1, round(width * scale))))
    return encode_jpeg(picture, quality=THUMBNAIL_QUALITY)


@dataclass
class GalleryFaces:
    """The faces of a folder, ready to index: names (in the report), latents and thumbnails by name."""

    report: IndexReport
    latents: np.ndarray
    thumbnails: dict[str, bytes]


def collect_faces(
    gallery_dir: Path,
    backend: Backend,
    *,
    config: PipelineConfig = DEFAULT_PIPELINE,
    whole_image: bool = False,
    all_faces: bool = False,
    threshold: float | None = None,
    batch_size: int = 16,
    progress: Callable[[str, int], None] | None = None,
) -> GalleryFaces:
    """Find, encode and thumbnail the faces of every photo of a folder (see :func:`build_index`); write nothing."""
    gallery_dir = Path(gallery_dir)
    if not gallery_dir.is_dir():
        raise EmptyGallery(f"{gallery_dir} is not a folder")
    photos, others = gallery_files(gallery_dir)
    report = IndexReport(skipped=[p.relative_to(gallery_dir).as_posix() for p in others], photos=len(photos))
    pipeline = Pipeline(backend, config, threshold=threshold)
    stage = config.encode
    side = pipeline.input_side("encode")
    pending: list[np.ndarray] = []
    latents: list[np.ndarray] = []
    thumbnails: dict[str, bytes] = {}

    def flush() -> None:
        if pending:
            latents.append(pipeline.encode(pending, batch_size=batch_size))  # as an upload's face is encoded
            if progress is not None:
                progress("encode", len(pending))
            pending.clear()

    for path in photos:
        name = path.relative_to(gallery_dir).as_posix()
        if progress is not None:
            progress("detect", 1)
        try:
            image = decode_image(path.read_bytes())
        except (GatewayError, OSError) as exc:
            report.unreadable.append((name, _unreadable_reason(exc)))
            continue
        if whole_image:
            entries = [(name, _whole_picture(image, stage), _thumbnail(image, None))]
        else:
            photo = Photo(image, (image.shape[1], image.shape[0]))
            found, _ = pipeline.detect_faces(photo)
            if not found:
                report.no_face.append(name)
                continue
            if all_faces:
                found = sorted(found, key=lambda face: (face.box[1] + face.box[3], face.box[0] + face.box[2]))
                named = [(f"{name}{FACE_SEPARATOR}{n}", face) for n, face in enumerate(found, start=1)]
            else:
                named = [(name, found[0])]
            entries = [
                (entry, pipeline.face_crop("encode", photo, face, side), _thumbnail(image, face))
                for entry, face in named
            ]
        for entry, picture, thumbnail in entries:
            thumbnails[thumbnail_name(len(report.indexed))] = thumbnail
            report.indexed.append(entry)
            pending.append(picture)
            if len(pending) >= batch_size:
                flush()
    flush()
    if not report.indexed:
        raise EmptyGallery(
            f"no photo in {gallery_dir} could be indexed ({len(photos)} photos: "
            f"{len(report.unreadable)} unreadable, {len(report.no_face)} without a face; "
            f"{len(others)} other files skipped)"
        )
    return GalleryFaces(report, np.concatenate(latents), thumbnails)


def build_index(
    gallery_dir: Path,
    backend: Backend,
    search_base_path: Path,
    *,
    config: PipelineConfig = DEFAULT_PIPELINE,
    whole_image: bool = False,
    all_faces: bool = False,
    threshold: float | None = None,
    batch_size: int = 16,
    version: int | None = None,
    progress: Callable[[str, int], None] | None = None,
) -> IndexReport:
    """Index every photo of a folder and write a new latent_search_model version under search_base_path.

    Photos are taken in sorted order, so the same folder gives the same index. Each is
    decoded upright; its best face (with ``all_faces``, each face, named ``photo#1``,
    ``photo#2``... from the left) is found and fed to the encoder as the pipeline in
    ``config`` feeds an upload, or with ``whole_image`` the picture is taken as one face.
    Each entry is stored with its name relative to the folder and a colour thumbnail.
    Files that cannot be read or show no face are reported, not fatal; a folder with
    nothing usable raises EmptyGallery.
    """
    faces = collect_faces(
        gallery_dir,
        backend,
        config=config,
        whole_image=whole_image,
        all_faces=all_faces,
        threshold=threshold,
        batch_size=batch_size,
        progress=progress,
    )
    report = faces.report
    # The gateway serves a thumbnail only for a name listed here, by its position.
    extra = {**faces.thumbnails, THUMBNAIL_INDEX: json.dumps({"files": report.indexed}, ensure_ascii=False).encode()}
    search_base_path = Path(search_base_path)
    target = search_base_path / str(version if version is not None else next_version(search_base_path))
    report.version_dir = export_search_model(target, faces.latents, report.indexed, extra_files=extra)
    return report


def describe(report: IndexReport) -> Iterable[str]:
    """Lines a person reads after build-index."""
    faces = "face" if len(report.indexed) == 1 else "faces"
    yield f"indexed {len(report.indexed)} {faces} from {report.photos} photo(s) into {report.version_dir}"
    for name, reason in report.unreadable:
        yield f"unreadable: {name}: {reason}"
    for name in report.no_face:
        yield f"no face found: {name}"
    for name in report.skipped:
        yield f"skipped (not a {FORMAT_NAMES} file name): {name}"
