"""Gallery thumbnails: found by the name the search index knows, never by a path built from the request.

The names are declared here (``build-index`` writes them, the gateway reads them), and this
module imports no TensorFlow: the thin gateway serves thumbnails too.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from pathlib import Path

from app.errors import NotFound
from app.serving.layout import list_versions

THUMBNAIL_DIR = "thumbnails"  # inside a search servable version's assets.extra/
THUMBNAIL_INDEX = f"{THUMBNAIL_DIR}/index.json"  # {"files": [gallery file name, ...]}, by gallery position


def thumbnail_name(index: int) -> str:
    """Thumbnails are named by gallery position, never by the photo's own file name."""
    return f"{THUMBNAIL_DIR}/{index:06d}.jpg"


class GalleryThumbnails:
    """Thumbnails stored in each latent_search_model version's assets.extra/thumbnails/."""

    def __init__(self, search_base_path: Path) -> None:
        self.base_path = Path(search_base_path)
        self._lock = threading.Lock()
        self._positions = lru_cache(maxsize=8)(self._load_positions)

    def _load_positions(self, version: int) -> dict[str, int]:
        index = self.base_path / str(version) / "assets.extra" / THUMBNAIL_INDEX
        try:
            files = json.loads(index.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {name: position for position, name in enumerate(files) if isinstance(name, str)}

    def latest_version(self) -> int:
        versions = list_versions(self.base_path)
        if not versions:
            raise NotFound("no gallery index has been built yet")
        return versions[-1]

    def path(self, name: str, version: int | None = None) -> Path:
        """The thumbnail file of a gallery face; 404 for any name the index does not list."""
        version = self.latest_version() if version is None else version
        with self._lock:
            position = self._positions(version).get(name)
        if position is None:
            raise NotFound(f"gallery version {version} has no face named {name[:200]!r}")
        path = self.base_path / str(version) / "assets.extra" / thumbnail_name(position)
        if not path.is_file():
            raise NotFound(f"gallery version {version} has no thumbnail for {name[:200]!r}")
        return path
