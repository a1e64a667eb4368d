"""Changes to a gallery, each computed from the current version's record: faces added, faces replaced, people erased.

The current gallery is the newest version of its servable (of every shard, read together). A
change never needs the photos of the faces it keeps. Erasure (:func:`remove`) also says which
older versions on disk still hold the erased faces, and writes one audit line that names no one.
"""

from __future__ import annotations

import fnmatch
import getpass
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.gallery.record import Faces, Manifest, RecordError, has_record, read_names, read_record
from app.serving.layout import list_versions

audit = logging.getLogger("app.gallery.audit")


@dataclass
class Gallery:
    """A gallery version as a whole: the faces of all its shards (shard order), and each shard's manifest."""

    version: int
    faces: Faces
    manifests: list[Manifest]

    @property
    def search(self) -> dict:
        return self.manifests[0].search


class GalleryChangeError(ValueError):
    """A change that is refused: what was asked, why not, and what to do instead."""


def latest_version(base_paths: Sequence[Path]) -> int | None:
    """The newest version held by every shard (a version only some shards have is being written, or was not
    finished: it is not the gallery yet)."""
    common = set(list_versions(base_paths[0]))
    for base in base_paths[1:]:
        common &= set(list_versions(base))
    return max(common, default=None)


def current(base_paths: Sequence[Path]) -> Gallery | None:
    """The current gallery (None when none has been built). GalleryChangeError when it has no record."""
    version = latest_version(base_paths)
    if version is None:
        return None
    parts: list[Faces] = []
    manifests = []
    for base in base_paths:
        folder = base / str(version)
        if not has_record(folder):
            raise GalleryChangeError(
                f"{folder} has no gallery record (it was built before versions carried one, or by another tool): "
                "build the gallery again from its photos (build-index FOLDER) or from descriptors "
                "(build-index --descriptors FILE), then add and remove faces from there"
            )
        faces, manifest = read_record(folder)
        parts.append(faces)
        manifests.append(manifest)
    combined = parts[0]
    for part in parts[1:]:
        combined = combined.plus(part)
    return Gallery(version, combined, manifests)


def add(gallery: Faces, new: Faces, *, replace: bool = False) -> tuple[Faces, list[str]]:
    """The gallery with ``new`` appended; (faces, names replaced). A name already in the gallery is refused
    unless ``replace`` (then the old face goes and the new one takes its name)."""
    repeated = [name for name, times in Counter(new.names).items() if times > 1]
    if repeated:
        raise GalleryChangeError(
            f"the new faces name {sorted(repeated)[:3]} more than once: every face needs its own name"
        )
    taken = set(gallery.names) & set(new.names)
    if taken and not replace:
        shown = ", ".join(repr(name) for name in sorted(taken)[:5])
        more = f" and {len(taken) - 5} more" if len(taken) > 5 else ""
        raise GalleryChangeError(
            f"{len(taken)} of the new faces have names the gallery already holds ({shown}{more}): rename them, or "
            "add --replace to swap the old faces for the new ones"
        )
    if taken:
        keep = np.array([name not in taken for name in gallery.names])
        gallery = gallery.take(np.flatnonzero(keep))
    return gallery.plus(new), sorted(taken)


def name_pattern(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression for shell-style globs on face names (``person/*``, ``*.jpg#2``); ``*`` crosses ``/``."""
    parts = [fnmatch.translate(pattern) for pattern in patterns]
    if not parts:
        raise GalleryChangeError("no pattern given: name the faces to remove, e.g. 'person/*'")
    return re.compile("|".join(f"(?:{part})" for part in parts))


def matching(names: Sequence[str], patterns: Sequence[str]) -> np.ndarray:
    """A mask of the names any pattern matches."""
    pattern = name_pattern(patterns)
    return np.fromiter((pattern.match(name) is not None for name in names), dtype=bool, count=len(names))


@dataclass
class Removal:
    faces: Faces
    removed: list[str]
    unmatched: list[str]  # patterns that matched no face


def remove(
    gallery: Faces, patterns: Sequence[str], *, allow_empty: bool = False, allow_unmatched: bool = False
) -> Removal:
    """The gallery without the faces the patterns match. Refused: a pattern that matches nothing (unless
    ``allow_unmatched``), and a change that leaves the gallery empty (unless ``allow_empty``)."""
    unmatched = [pattern for pattern in patterns if not matching(gallery.names, [pattern]).any()]
    if unmatched and not allow_unmatched:
        shown = ", ".join(repr(pattern) for pattern in unmatched[:5])
        raise GalleryChangeError(
            f"{len(unmatched)} pattern(s) match no face of the gallery ({shown}): check the names (build-index "
            "--list prints them), or add --allow-unmatched"
        )
    gone = matching(gallery.names, patterns)
    if gone.all() and not allow_empty:
        raise GalleryChangeError(
            f"removing these {int(gone.sum())} faces would leave the gallery empty: add --allow-empty if that is "
            "what you want (no search version is written for an empty gallery; retire the versions instead)"
        )
    removed = [name for name, hit in zip(gallery.names, gone, strict=True) if hit]
    return Removal(gallery.take(np.flatnonzero(~gone)), removed, unmatched)


def versions_holding(base_paths: Sequence[Path], patterns: Sequence[str], *, before: int) -> dict[int, int]:
    """Older versions on disk (below ``before``) that still hold faces the patterns match: version -> faces.

    A version without a record is read through its thumbnail index where it has one; one that cannot be
    read at all counts as holding them (it may): -1 faces."""
    found: dict[int, int] = {}
    versions = sorted({version for base in base_paths for version in list_versions(base) if version < before})
    for version in versions:
        count = 0
        for base in base_paths:
            folder = base / str(version)
            if not folder.is_dir():
                continue
            try:
                names = read_names(folder) if has_record(folder) else _legacy_names(folder)
            except (RecordError, OSError, ValueError):
                count = -1
                break
            count += int(matching(names, patterns).sum())
        if count:
            found[version] = count
    return found


def _legacy_names(folder: Path) -> list[str]:
    import json

    index = folder / "assets.extra" / "thumbnails" / "index.json"
    if not index.is_file():
        raise RecordError(f"{folder}: no gallery record and no thumbnail index")
    return list(json.loads(index.read_text(encoding="utf-8"))["files"])


def retire_command(servables: Sequence[str], versions: Iterable[int], root: Path) -> list[str]:
    """What retires older versions: the version policy first (so no server serves them), then the folders go."""
    listed = " ".join(str(version) for version in sorted(versions))
    return [
        f"1. serve only the new version: in serving_models.config give each of {', '.join(servables)} "
        "model_version_policy { latest { num_versions: 1 } } (or specific { versions: N }), and wait until their "
        "status lists the old versions as END",
        f"2. flask --app app retire-versions {' '.join(servables)} --versions {listed}"
        f"   (deletes {root}/<servable>/<version> for each, refusing any a server may still load)",
    ]


def audit_line(action: str, *, servables: Sequence[str], version: int, patterns: Sequence[str], removed: int,
               older: dict[int, int]) -> None:  # fmt: skip
    """One audit line per erasure. It names no person: the patterns are given as a digest (a log that keeps the
    names of erased people would keep what was erased)."""
    digest = hashlib.sha256("\n".join(sorted(patterns)).encode("utf-8")).hexdigest()[:16]
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    audit.warning(
        "gallery %s: servables=%s new_version=%d faces_removed=%d patterns=%d patterns_sha256=%s "
        "older_versions_still_holding=%s by=%s",
        action, ",".join(servables), version, removed, len(patterns), digest,
        ",".join(str(v) for v in sorted(older)) or "none", who,
    )  # fmt: skip
