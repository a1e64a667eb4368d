"""Gallery thumbnails: found by the name the search index knows, never by a path built from the request's text.

A version's thumbnails live under ``assets.extra/thumbnails/``, each named by the SHA-256 of its
face's name (``thumbnails/ab/ab12...ef.jpg``): a name from a request only ever becomes 64 hex
digits, so no request can reach another file; no index has to be held in memory (a ten-million-face
gallery serves thumbnails as cheaply as a small one); and a face keeps its file from version to
version, so a new version links the files it keeps instead of copying or renumbering them.
Versions written before this layout (``thumbnails/index.json`` listing names by position,
``thumbnails/000123.jpg``) are still read. A sharded gallery looks in each shard's version.

The names are declared here (the gallery writer writes them, the gateway reads them), and this
module imports no TensorFlow: the thin gateway serves thumbnails too.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from app.errors import NotFound
from app.serving.layout import list_versions

THUMBNAIL_DIR = "thumbnails"  # inside a search servable version's assets.extra/
LEGACY_INDEX = f"{THUMBNAIL_DIR}/index.json"  # the positional layout: {"files": [gallery file name, ...]}


def thumbnail_name(face: str) -> str:
    """Where a face's thumbnail lives under assets.extra/: by the digest of its name, never by the name itself."""
    digest = hashlib.sha256(face.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{THUMBNAIL_DIR}/{digest[:2]}/{digest}.jpg"


def legacy_thumbnail_name(index: int) -> str:
    """The positional layout's file name (versions built before the digest layout)."""
    return f"{THUMBNAIL_DIR}/{index:06d}.jpg"


class GalleryThumbnails:
    """The thumbnails of a search servable's versions; of every shard's, for a sharded gallery."""

    def __init__(self, search_base_paths: Path | Sequence[Path]) -> None:
        paths = [search_base_paths] if isinstance(search_base_paths, (str, Path)) else list(search_base_paths)
        self.base_paths = [Path(path) for path in paths]
        self._lock = threading.Lock()
        self._legacy = lru_cache(maxsize=8)(self._load_legacy_positions)

    def _load_legacy_positions(self, version_dir: Path) -> dict[str, int]:
        try:
            files = json.loads((version_dir / "assets.extra" / LEGACY_INDEX).read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {name: position for position, name in enumerate(files) if isinstance(name, str)}

    def latest_version(self) -> int:
        """The newest version any shard has (each shard of a gallery is written with the same version numbers)."""
        versions = [version for base in self.base_paths for version in list_versions(base)]
        if not versions:
            raise NotFound("no gallery index has been built yet")
        return max(versions)

    def path(self, name: str, version: int | None = None) -> Path:
        """The thumbnail file of a gallery face; 404 for any name the version does not hold."""
        version = self.latest_version() if version is None else version
        for base in self.base_paths:
            version_dir = base / str(version)
            found = version_dir / "assets.extra" / thumbnail_name(name)
            if found.is_file():
                return found
            with self._lock:
                position = self._legacy(version_dir).get(name)
            if position is not None:
                legacy = version_dir / "assets.extra" / legacy_thumbnail_name(position)
                if legacy.is_file():
                    return legacy
        raise NotFound(f"gallery version {version} has no thumbnail for a face named {name[:200]!r}")
