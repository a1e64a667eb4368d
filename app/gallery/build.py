"""build-index as a pure function: the next gallery version from photos, descriptors, additions and erasures.

A new gallery comes from a folder of photos or a descriptors file. A change (``add``, ``remove``,
shards, search kind) starts from the current version's record, so only new photos are encoded and
no photo of a kept face is needed. Every version is written whole (app.gallery.publish).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.gallery import changes
from app.gallery.descriptors import IMPORT_ENCODER, read_descriptors
from app.gallery.indexing import IndexReport, Progress, collect_faces, work_folder
from app.gallery.publish import Published, SearchChoice, publish
from app.gallery.record import Faces
from app.pipeline_config import PipelineConfig
from app.serving.base import Backend
from app.serving.layout import list_versions
from app.thumbnails import thumbnail_name


@dataclass
class BuildRequest:
    """What build-index was asked."""

    folder: Path | None = None  # photos to index
    descriptors: Path | None = None  # or faces brought as descriptors (.npz)
    add: bool = False  # to the current gallery (else the faces make a new gallery)
    replace: bool = False  # with add: a name the gallery holds is replaced, not refused
    remove: Sequence[str] = ()  # globs on face names to erase from the current gallery
    allow_empty: bool = False
    allow_unmatched: bool = False
    search: str | None = None  # exact | ivf | auto; None: the current gallery's kind (auto for a new gallery)
    lists: int | None = None
    probes: int | None = None
    retrain: bool = False
    shards: int | None = None  # None: as the pipeline file's [search] names them
    whole_image: bool = False
    all_faces: bool = False
    threshold: float | None = None
    batch_size: int = 16
    workers: int | None = None
    resume: bool = False
    encoder: str | None = None  # what made imported descriptors (servable@version); default: "import"
    version: int | None = None  # the version to write; default: the next one


@dataclass
class BuildResult:
    published: Published
    servables: list[str]
    added: int = 0
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    older_holding: dict[int, int] = field(default_factory=dict)  # older versions still holding erased faces
    report: IndexReport | None = None


def gallery_servables(config: PipelineConfig, shards: int | None = None) -> list[str]:
    """The servables of the gallery: the pipeline file's shards, or its one search servable; with ``shards``
    (a new shard count), ``<servable>_<i>`` for each."""
    named = list(config.search.shards or [config.search.servable])
    if shards is None or shards == len(named):
        return named
    if shards == 1:
        return [config.search.servable]
    return [f"{config.search.servable}_{index}" for index in range(shards)]


def build_gallery(
    request: BuildRequest,
    backend: Backend,
    config: PipelineConfig,
    root: Path,
    *,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> BuildResult:
    """Write the next gallery version as ``request`` asks (see build-index's help); raises GalleryChangeError,
    DescriptorFileError, EmptyGallery, RecordError or indexing's Interrupted, each with a message for a person."""
    brings_faces = request.folder is not None or request.descriptors is not None
    reshapes = request.shards is not None or request.search is not None or request.retrain
    if not brings_faces and not request.remove and not reshapes:
        raise changes.GalleryChangeError("nothing to do: give a folder of photos, --descriptors, or --remove")
    current_servables = gallery_servables(config)
    target_servables = gallery_servables(config, request.shards)
    current_bases = [root / name for name in current_servables]
    changing = request.add or bool(request.remove) or not brings_faces
    gallery = changes.current(current_bases) if changing else None
    if changing and gallery is None:
        raise changes.GalleryChangeError(
            f"there is no gallery to change yet under {root / current_servables[0]}: build one first "
            "(build-index FOLDER, or --descriptors FILE)"
        )
    result = BuildResult(Published(0), target_servables)
    faces = gallery.faces if gallery is not None else None
    if request.remove:
        assert faces is not None
        removal = changes.remove(
            faces, request.remove, allow_empty=request.allow_empty, allow_unmatched=request.allow_unmatched
        )
        faces, result.removed, result.unmatched = removal.faces, removal.removed, removal.unmatched
    new, new_thumbnails = _new_faces(
        request, backend, config, root / current_servables[0], gallery, result, progress, stop
    )
    if new is not None:
        if faces is None or not request.add:
            faces = new
        else:
            faces, result.replaced = changes.add(faces, new, replace=request.replace)
        result.added = len(new)
    assert faces is not None
    version = request.version or 1 + max(
        (v for name in {*current_servables, *target_servables} for v in list_versions(root / name)), default=0
    )
    kind = request.search or (gallery.search.get("kind", "auto") if gallery is not None else "auto")
    choice = SearchChoice(kind=kind, lists=request.lists, probes=request.probes, retrain=request.retrain)
    thumbnails = _thumbnails(faces, gallery, current_bases, new_thumbnails)
    if not len(faces) and request.allow_empty:
        result.published = Published(version)
    else:
        parent = gallery.version if gallery is not None and target_servables == current_servables else None
        result.published = publish(
            root, target_servables, faces, version, choice=choice, parent=parent, thumbnails=thumbnails
        )
    if request.remove:
        bases = [root / name for name in dict.fromkeys([*current_servables, *target_servables])]
        result.older_holding = changes.versions_holding(bases, request.remove, before=version)
        changes.audit_line(
            "erasure",
            servables=target_servables,
            version=version,
            patterns=request.remove,
            removed=len(result.removed),
            older=result.older_holding,
        )
    return result


def _new_faces(
    request: BuildRequest,
    backend: Backend,
    config: PipelineConfig,
    search_base: Path,
    gallery: changes.Gallery | None,
    result: BuildResult,
    progress: Callable[[Progress], None] | None,
    stop: threading.Event | None,
) -> tuple[Faces | None, dict[str, bytes]]:
    """The faces the request brings (photos indexed, or descriptors read), and the thumbnails of those from photos."""
    if request.descriptors is not None:
        latent = list(gallery.faces.latent_shape) if gallery is not None and len(gallery.faces) else None
        if latent is None:
            latent = _encoder_latent_shape(backend, config)
        encoder = request.encoder or IMPORT_ENCODER
        return read_descriptors(request.descriptors, latent_shape=latent, encoder=encoder), {}
    if request.folder is None:
        return None, {}
    options = {
        "whole_image": request.whole_image,
        "all_faces": request.all_faces,
        "threshold": request.threshold,
        "encoder": config.encode.servable,
        "detector": config.detect.servable,
    }
    found = collect_faces(
        request.folder,
        backend,
        config=config,
        whole_image=request.whole_image,
        all_faces=request.all_faces,
        threshold=request.threshold,
        batch_size=request.batch_size,
        workers=request.workers or 4,
        work=work_folder(search_base, request.folder, options),
        resume=request.resume,
        progress=progress,
        stop=stop,
    )
    result.report = found.report
    return found.faces, found.thumbnails


def _encoder_latent_shape(backend: Backend, config: PipelineConfig) -> list[int] | None:
    """The encoder's latent shape, from its metadata (None when the encoder cannot tell, or is not there)."""
    from app.errors import GatewayError

    try:
        spec = backend.metadata(config.encode.ref()).outputs[config.encode.outputs["latent"]]
    except (GatewayError, KeyError):
        return None
    if spec.shape is None or any(d is None or d < 0 for d in spec.shape[1:]):
        return None
    return [int(d) for d in spec.shape[1:]]


def _thumbnails(
    faces: Faces, gallery: changes.Gallery | None, bases: Sequence[Path], new_thumbnails: dict[str, bytes]
) -> dict[str, bytes | Path]:
    """Each face's thumbnail: a new face's JPEG, or a kept face's file in the current version (linked, not copied)."""
    found: dict[str, bytes | Path] = dict(new_thumbnails)
    if gallery is None:
        return found
    folders = [base / str(gallery.version) / "assets.extra" for base in bases]
    for name in faces.names:
        if name in found:
            continue
        relative = thumbnail_name(name)
        for folder in folders:
            path = folder / relative
            if path.is_file():
                found[name] = path
                break
    return found
