"""Writing a gallery version: the search servable (exact or IVF; one, or one per shard) with its record and thumbnails.

Every version of every shard is written whole or not at all (``app.serving.layout.write_version``),
all shards of a gallery with the same version number. A shard whose faces did not change since
the version it is derived from is linked file by file from that version (hard links: no space, no
export), so erasing one person rewrites one shard.

Faces go to shards by a hash of their name, so a face's shard never depends on the others: adding
and removing faces never moves the rest. Within a gallery of ``n`` shards the face at position
``p`` of shard ``s`` has the index ``p * n + s``: indices stay apart across shards.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.gallery.record import (
    FACES_FILE,
    MANIFEST_FILE,
    RECORD_DIR,
    Faces,
    Manifest,
    RecordError,
    has_record,
    read_manifest,
    read_names,
    text_column,
)
from app.serving.layout import ExtraFile, link_tree, write_version
from app.thumbnails import thumbnail_name

SEARCH_KINDS = ("exact", "ivf", "auto")
# From this many faces (per shard) `--search auto` writes an IVF servable. Measured with `python -m bench.search
# --crossover` (2 cores, no GPU, 2026-12-07; docs/benchmarks.md#approximate-search): IVF at its default probes answers
# one query faster than exact search at every size tried (0.73 against 0.96 ms at 10,000 faces, 3.7 against 56 ms at
# 1,000,000), but its recall@10 reaches 0.95 (enrolled and unseen people) only at 1,000,000 (0.96 / 0.96; 300,000:
# 0.94 / 0.92; the --ivf run's 500 + 500 queries at 1M: 0.965 / 0.949, at the line). Below that exact search is exact
# and still fast enough.
AUTO_IVF_FROM = 1_000_000
IVF_TRAINING_FILE = "ivf.npz"


@dataclass(frozen=True)
class SearchChoice:
    """How the version searches: ``exact``, ``ivf`` or ``auto`` (by size), IVF's lists and probes (None: chosen
    from the gallery's size), and whether IVF's lists are trained again rather than kept from the parent."""

    kind: str = "auto"
    lists: int | None = None
    probes: int | None = None
    retrain: bool = False

    def kind_for(self, count: int) -> str:
        if self.kind == "auto":
            return "ivf" if count >= AUTO_IVF_FROM else "exact"
        return self.kind


@dataclass
class ShardWritten:
    """One shard's new version: where, how many faces, how it searches, and whether it was linked unchanged."""

    servable: str
    version_dir: Path
    faces: int
    search: dict[str, Any]
    linked: bool = False
    advice: str | None = None  # IVF: why the lists should be trained again, when they should


@dataclass
class Published:
    version: int
    shards: list[ShardWritten] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return sum(shard.faces for shard in self.shards)


def shard_of(name: str, shards: int) -> int:
    """The shard a face belongs to: a hash of its name, so it never depends on the other faces."""
    if shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()[:8], "big") % shards


def split_into_shards(faces: Faces, shards: int) -> list[Faces]:
    """The faces of each shard, each keeping the gallery's order."""
    owners = np.array([shard_of(name, shards) for name in faces.names], dtype=np.int64)
    return [faces.take(np.flatnonzero(owners == shard)) for shard in range(shards)]


def faces_file(faces: Faces) -> Callable[[Path], None]:
    """A writer of the record's faces.npz (streamed to disk: a ten-million-face record never sits in memory twice)."""

    def write(path: Path) -> None:
        arrays: dict[str, np.ndarray] = {
            "descriptors": np.ascontiguousarray(faces.descriptors, dtype=np.float32),
            "boxes": faces.boxes.astype(np.float32),
            "scores": faces.scores.astype(np.float32),
            "encoders": faces.encoders.astype(np.int32),
            "added": faces.added.astype(np.int64),
        }
        arrays["names_utf8"], arrays["names_offsets"] = text_column(faces.names)
        arrays["sources_utf8"], arrays["sources_offsets"] = text_column(faces.sources)
        with path.open("wb") as out:
            np.savez(out, **arrays)

    return write


def publish(
    root: Path,
    servables: Sequence[str],
    faces: Faces,
    version: int,
    *,
    choice: SearchChoice = SearchChoice(),
    parent: int | None = None,
    thumbnails: Mapping[str, bytes | Path] | None = None,
) -> Published:
    """Write ``version`` of the gallery held by ``servables`` under ``root`` (one servable, or its shards in order).

    ``thumbnails`` maps face names to a JPEG's bytes or to an existing thumbnail file (linked); faces without one
    have none. ``parent``, the version this one is derived from: shards it holds unchanged are linked, IVF lists
    are kept (unless ``choice.retrain``). Raises RecordError for an empty gallery or an empty shard.
    """
    if not len(faces):
        raise RecordError("the gallery would hold no face")
    if len(set(faces.names)) != len(faces.names):
        raise RecordError("two faces with the same name: every face of a gallery needs its own name")
    count = len(servables)
    written = Published(version)
    for index, (servable, shard_faces) in enumerate(zip(servables, split_into_shards(faces, count), strict=True)):
        if not len(shard_faces):
            raise RecordError(
                f"shard {index} ({servable}) would hold no face: {len(faces)} faces are too few for {count} shards"
            )
        shard = {"index": index, "of": count, "servables": list(servables)} if count > 1 else None
        written.shards.append(
            _write_shard(root / servable, servable, shard_faces, version, choice, parent, shard, thumbnails or {})
        )
    return written


def _write_shard(
    base: Path,
    servable: str,
    faces: Faces,
    version: int,
    choice: SearchChoice,
    parent: int | None,
    shard: dict[str, Any] | None,
    thumbnails: Mapping[str, bytes | Path],
) -> ShardWritten:
    parent_dir = base / str(parent) if parent is not None else None
    kind = choice.kind_for(len(faces))
    target = base / str(version)
    if parent_dir is not None and _unchanged(parent_dir, faces, kind, choice, shard):
        manifest = read_manifest(parent_dir)
        manifest.parent, manifest.shard = parent, shard
        manifest.written = time.time()

        def relink(staging: Path) -> None:
            link_tree(parent_dir, staging)
            path = staging / RECORD_DIR / MANIFEST_FILE
            path.unlink()
            path.write_text(manifest.to_json(), encoding="utf-8")

        write_version(target, relink)
        return ShardWritten(servable, target, len(faces), manifest.search, linked=True)

    manifest = Manifest(
        count=len(faces),
        latent_shape=list(faces.latent_shape),
        search={"kind": kind},
        encoders=list(faces.encoder_names),
        parent=parent,
        shard=shard,
    )
    extra: dict[str, ExtraFile] = {f"gallery/{FACES_FILE}": faces_file(faces)}
    for name in faces.names:
        picture = thumbnails.get(name)
        if picture is not None:
            extra[thumbnail_name(name)] = picture
    stride, offset = (shard["of"], shard["index"]) if shard else (1, 0)
    advice = None
    if kind == "ivf":
        from app.modelzoo import ivf

        training = None
        if parent_dir is not None and not choice.retrain and (parent_dir / RECORD_DIR / IVF_TRAINING_FILE).is_file():
            training = ivf.IvfTraining.from_bytes((parent_dir / RECORD_DIR / IVF_TRAINING_FILE).read_bytes())
            if training.dim != int(np.prod(faces.latent_shape)) or (choice.lists and choice.lists != training.lists):
                training = None
        if training is None:
            training = ivf.train_ivf(faces.descriptors.reshape(len(faces), -1), lists=choice.lists)
        advice = ivf.training_advice(training, faces.descriptors.reshape(len(faces), -1))
        extra[f"gallery/{IVF_TRAINING_FILE}"] = training.to_bytes()
        # The manifest is written with the export's extra files, so it must say the lists and probes before.
        probes = choice.probes or ivf.default_probes(training.lists)
        manifest.search.update({"lists": training.lists, "probes": probes})
        ivf.export_ivf_search_model(
            target,
            faces.descriptors,
            faces.names,
            training,
            probes=probes,
            extra_files=_with_manifest(extra, manifest),
            index_stride=stride,
            index_offset=offset,
        )
    else:
        from app.modelzoo.search import export_search_model

        export_search_model(
            target,
            faces.descriptors,
            faces.names,
            extra_files=_with_manifest(extra, manifest),
            index_stride=stride,
            index_offset=offset,
        )
    return ShardWritten(servable, target, len(faces), manifest.search, advice=advice)


def _with_manifest(extra: dict[str, ExtraFile], manifest: Manifest) -> dict[str, ExtraFile]:
    """The extra files with the manifest's writer last (it writes the manifest as it is when the export runs)."""

    def write(path: Path) -> None:
        path.write_text(manifest.to_json(), encoding="utf-8")

    return {**extra, f"gallery/{MANIFEST_FILE}": write}


def _unchanged(parent_dir: Path, faces: Faces, kind: str, choice: SearchChoice, shard: dict[str, Any] | None) -> bool:
    """Whether the parent version of this shard already holds exactly these faces, searched the way now asked."""
    if not has_record(parent_dir):
        return False
    try:
        manifest = read_manifest(parent_dir)
        names = read_names(parent_dir)
    except RecordError:
        return False
    if names != faces.names or manifest.search.get("kind") != kind or manifest.shard != shard:
        return False
    if kind == "ivf":
        if choice.retrain or (choice.lists and manifest.search.get("lists") != choice.lists):
            return False
        if choice.probes and manifest.search.get("probes") != choice.probes:
            return False
    return True
