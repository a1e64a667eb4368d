"""A gallery version's record: every face's descriptor, name and provenance, stored beside the search servable.

The record is the gallery's source of truth; the servable is derived from it. Every next version
(faces added, a person erased, lists trained again, shards changed) is computed from the previous
version's record, never from photos that may be gone. It lives in the version folder under
``assets.extra/gallery/``, which TF Serving never reads:

- ``faces.npz`` (numpy's npz, uncompressed, no pickles), one row per face, N rows:

  ============== ================ ===========================================================
  array          dtype, shape     what
  ============== ================ ===========================================================
  descriptors    float32 [N, D]   the encoder's output for the face, exactly (D: the latent)
  names          text column      the face's name in the gallery (``person/photo.jpg``,
                                  ``photo.jpg#2`` for the second face of a group photo)
  sources        text column      the photo it came from, relative to the folder indexed
                                  ("" for a face brought as a descriptor)
  boxes          float32 [N, 4]   ymin, xmin, ymax, xmax normalised to the photo (NaN: none)
  scores         float32 [N]      the detector's score (NaN: none)
  encoders       int32 [N]        position in ``manifest.json``'s ``encoders`` list
  added          int64 [N]        when the face entered the gallery, seconds since the epoch
  ============== ================ ===========================================================

  A text column is two arrays, ``<column>_utf8`` (uint8, every value's UTF-8 bytes one after the
  other) and ``<column>_offsets`` (int64 [N + 1], where each value starts): ten million names cost
  their bytes, not ten million fixed-width slots.
- ``manifest.json``: the format number, the face count, the latent shape, the search kind and its
  parameters, the encoders (``servable@version``), the version it was derived from, the shard (if
  any), when it was written.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RECORD_DIR = Path("assets.extra") / "gallery"
FACES_FILE = "faces.npz"
MANIFEST_FILE = "manifest.json"
RECORD_FORMAT = 1
TEXT_COLUMNS = ("names", "sources")


class RecordError(ValueError):
    """A gallery record that cannot be read, or faces that cannot make one."""


def text_column(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(utf8 bytes, offsets) of a column of strings."""
    encoded = [value.encode("utf-8") for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(value) for value in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def read_text_column(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The strings of a (utf8 bytes, offsets) column."""
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[start:end].decode("utf-8") for start, end in itertools.pairwise(bounds)]


@dataclass
class Faces:
    """Faces as the record holds them: parallel columns, one row per face."""

    descriptors: np.ndarray  # float32 [N, *latent_shape]
    names: list[str]
    sources: list[str]
    boxes: np.ndarray  # float32 [N, 4]
    scores: np.ndarray  # float32 [N]
    encoders: np.ndarray  # int32 [N], positions in encoder_names
    added: np.ndarray  # int64 [N]
    encoder_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.names)
        columns = {
            "descriptors": len(self.descriptors),
            "sources": len(self.sources),
            "boxes": len(self.boxes),
            "scores": len(self.scores),
            "encoders": len(self.encoders),
            "added": len(self.added),
        }
        wrong = {name: size for name, size in columns.items() if size != count}
        if wrong:
            raise RecordError(f"{count} names but {wrong}: every column needs one row per face")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.descriptors.shape[1:])

    @classmethod
    def empty(cls, latent_shape: Sequence[int]) -> Faces:
        return cls(
            descriptors=np.zeros((0, *latent_shape), np.float32),
            names=[],
            sources=[],
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros(0, np.float32),
            encoders=np.zeros(0, np.int32),
            added=np.zeros(0, np.int64),
        )

    @classmethod
    def new(
        cls,
        descriptors: np.ndarray,
        names: Sequence[str],
        *,
        encoder: str,
        sources: Sequence[str] | None = None,
        boxes: np.ndarray | None = None,
        scores: np.ndarray | None = None,
        added: float | None = None,
    ) -> Faces:
        """Faces that enter the gallery now, all made by one encoder (``servable@version``, or ``import``)."""
        count = len(names)
        when = int(time.time() if added is None else added)
        return cls(
            descriptors=np.ascontiguousarray(descriptors, dtype=np.float32),
            names=list(names),
            sources=list(sources) if sources is not None else [""] * count,
            boxes=np.full((count, 4), np.nan, np.float32) if boxes is None else np.asarray(boxes, np.float32),
            scores=np.full(count, np.nan, np.float32) if scores is None else np.asarray(scores, np.float32),
            encoders=np.zeros(count, np.int32),
            added=np.full(count, when, np.int64),
            encoder_names=[encoder],
        )

    def take(self, rows: np.ndarray | Sequence[int]) -> Faces:
        """These rows, in this order."""
        rows = np.asarray(rows, dtype=np.int64)
        return Faces(
            descriptors=self.descriptors[rows],
            names=[self.names[i] for i in rows.tolist()],
            sources=[self.sources[i] for i in rows.tolist()],
            boxes=self.boxes[rows],
            scores=self.scores[rows],
            encoders=self.encoders[rows],
            added=self.added[rows],
            encoder_names=list(self.encoder_names),
        )

    def plus(self, other: Faces) -> Faces:
        """These faces followed by ``other``'s (encoder positions merged into one list)."""
        if len(self) and len(other) and self.latent_shape != other.latent_shape:
            raise RecordError(
                f"the new faces' descriptors have shape {list(other.latent_shape)}, the gallery's "
                f"{list(self.latent_shape)}: they come from another encoder"
            )
        names = list(dict.fromkeys([*self.encoder_names, *other.encoder_names]))
        remap = np.array([names.index(name) for name in other.encoder_names] or [0], np.int32)
        other_encoders = remap[other.encoders] if len(other) else other.encoders
        descriptors = other.descriptors if not len(self) else np.concatenate([self.descriptors, other.descriptors])
        return Faces(
            descriptors=descriptors,
            names=[*self.names, *other.names],
            sources=[*self.sources, *other.sources],
            boxes=np.concatenate([self.boxes, other.boxes]),
            scores=np.concatenate([self.scores, other.scores]),
            encoders=np.concatenate([self.encoders, other_encoders]).astype(np.int32),
            added=np.concatenate([self.added, other.added]),
            encoder_names=names,
        )

    def encoder_of(self, row: int) -> str:
        return self.encoder_names[int(self.encoders[row])]


@dataclass
class Manifest:
    """What a version is: how many faces, of what shape, searched how, derived from which version."""

    count: int
    latent_shape: list[int]
    search: dict[str, Any]  # {"kind": "exact"} or {"kind": "ivf", "lists": ..., "probes": ..., ...}
    encoders: list[str]
    parent: int | None = None
    shard: dict[str, Any] | None = None  # {"index": i, "of": n, "servables": [...]} for a shard of a gallery
    written: float = field(default_factory=time.time)
    format: int = RECORD_FORMAT

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != RECORD_FORMAT:
            raise RecordError(f"gallery record format {data.get('format')!r} is not {RECORD_FORMAT}")
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**known)


def write_record(folder: Path, faces: Faces, manifest: Manifest) -> None:
    """Write ``faces.npz`` and ``manifest.json`` into ``folder`` (a staging version's record folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "descriptors": np.ascontiguousarray(faces.descriptors, dtype=np.float32),
        "boxes": faces.boxes.astype(np.float32),
        "scores": faces.scores.astype(np.float32),
        "encoders": faces.encoders.astype(np.int32),
        "added": faces.added.astype(np.int64),
    }
    for column in TEXT_COLUMNS:
        arrays[f"{column}_utf8"], arrays[f"{column}_offsets"] = text_column(getattr(faces, column))
    with (folder / FACES_FILE).open("wb") as out:
        np.savez(out, **arrays)
    manifest.encoders = list(faces.encoder_names)
    manifest.count = len(faces)
    (folder / MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")


def record_folder(version_dir: Path) -> Path:
    return Path(version_dir) / RECORD_DIR


def has_record(version_dir: Path) -> bool:
    folder = record_folder(version_dir)
    return (folder / FACES_FILE).is_file() and (folder / MANIFEST_FILE).is_file()


def read_manifest(version_dir: Path) -> Manifest:
    path = record_folder(version_dir) / MANIFEST_FILE
    try:
        return Manifest.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError) as exc:
        raise RecordError(f"{path}: the gallery record cannot be read ({exc})") from exc


def read_names(version_dir: Path) -> list[str]:
    """Only the names of a version's faces (the descriptors stay on disk)."""
    path = record_folder(version_dir) / FACES_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            return read_text_column(data["names_utf8"], data["names_offsets"])
    except (OSError, ValueError, KeyError) as exc:
        raise RecordError(f"{path}: the gallery record cannot be read ({exc})") from exc


def read_record(version_dir: Path) -> tuple[Faces, Manifest]:
    """A version's faces and manifest; RecordError if it has none or it is damaged."""
    manifest = read_manifest(version_dir)
    path = record_folder(version_dir) / FACES_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            columns = {name: read_text_column(data[f"{name}_utf8"], data[f"{name}_offsets"]) for name in TEXT_COLUMNS}
            faces = Faces(
                descriptors=data["descriptors"],
                names=columns["names"],
                sources=columns["sources"],
                boxes=data["boxes"],
                scores=data["scores"],
                encoders=data["encoders"],
                added=data["added"],
                encoder_names=list(manifest.encoders),
            )
    except (OSError, ValueError, KeyError) as exc:
        raise RecordError(f"{path}: the gallery record cannot be read ({exc})") from exc
    if len(faces) != manifest.count:
        raise RecordError(f"{path}: {len(faces)} faces, but the manifest says {manifest.count}")
    return faces, manifest
