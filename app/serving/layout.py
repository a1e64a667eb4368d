"""TF Serving's folder layout for a servable: version folders under its base path. One definition; no TensorFlow.

TF Serving (file_system_storage_path_source.cc) takes every child of a base path whose name
``absl::SimpleAtoi`` reads as an int64 as a version: optional ASCII whitespace around an
optionally signed decimal number, nothing looked at inside. The embedded runtime, the model zoo
(next version, "already there") and the gallery thumbnails all ask here, so they agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

# absl::SimpleAtoi: optional ASCII whitespace around an optionally signed decimal integer.
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)[ \t\n\v\f\r]*")
_INT64 = (-(2**63), 2**63 - 1)


def parse_version(name: str) -> int | None:
    """The version a base path child's name stands for, or None: TF Serving takes any name absl::SimpleAtoi reads."""
    match = _VERSION_NAME.fullmatch(name)
    if match is None:
        return None
    number = int(match.group(1))
    return number if _INT64[0] <= number <= _INT64[1] else None


def version_folders(base_path: Path, on_duplicate: Callable[[int, str, str], None] | None = None) -> dict[int, Path]:
    """Every version under a base path, by number, as TF Serving's poll sees them: children in name order, a later
    name for the same number (``3`` then ``03``) replacing an earlier one, ``on_duplicate(version, kept, ignored)``
    told. Raises OSError when the base path cannot be listed."""
    base = Path(base_path)
    by_version: dict[int, str] = {}
    for name in sorted(child.name for child in base.iterdir()):
        version = parse_version(name)
        if version is None:
            continue
        if version in by_version and on_duplicate is not None:
            on_duplicate(version, name, by_version[version])
        by_version[version] = name
    return {version: base / name for version, name in by_version.items()}


def list_versions(base_path: Path) -> list[int]:
    """The version numbers under a base path, ascending; none when it cannot be listed."""
    try:
        return sorted(version_folders(base_path))
    except OSError:
        return []


def has_version(base_path: Path) -> bool:
    """Whether a base path holds at least one version folder."""
    return bool(list_versions(base_path))


def next_version(base_path: Path) -> int:
    """One more than the highest version under base_path (1 for none)."""
    return max(list_versions(base_path), default=0) + 1
