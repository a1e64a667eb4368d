"""TF Serving's folder layout for a servable: integer-named version folders under its base path, no TensorFlow."""

from __future__ import annotations

from pathlib import Path


def list_versions(base_path: Path) -> list[int]:
    """Version numbers under a base path: integer-named folders that hold a complete SavedModel."""
    try:
        children = list(base_path.iterdir())
    except OSError:
        return []
    found = []
    for child in children:
        if not child.name.isdigit() or not child.is_dir():
            continue
        if (child / "saved_model.pb").is_file() or (child / "saved_model.pbtxt").is_file():
            found.append(int(child.name))
    return sorted(found)
