"""TF Serving's folder layout for a servable: version folders under its base path. One definition; no TensorFlow.

TF Serving (file_system_storage_path_source.cc) takes every child of a base path whose name
``absl::SimpleAtoi`` reads as an int64 as a version: optional ASCII whitespace around an
optionally signed decimal number, nothing looked at inside. The embedded runtime, the model zoo
(next version, "already there") and the gallery thumbnails all ask here, so they agree.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
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


def write_version(version_dir: Path, fill: Callable[[Path], None], *, replace: bool = False) -> Path:
    """Write a version folder whole or not at all: ``fill(staging)`` writes into a hidden folder beside it, which is
    then renamed into place, so a server polling the base path never sees half a version. An existing version is an
    error unless ``replace``; a failed ``fill`` leaves nothing behind."""
    version_dir = Path(version_dir)
    if parse_version(version_dir.name) is None or not version_dir.name.isdigit():
        raise ValueError(f"{version_dir}: a version folder's name must be a whole number")
    if version_dir.exists() and not replace:
        raise FileExistsError(f"{version_dir} already exists")
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = version_dir.parent / f".{version_dir.name}.{uuid.uuid4().hex}.tmp"
    try:
        staging.mkdir()
        fill(staging)
        if version_dir.exists():
            retired = version_dir.parent / f".{version_dir.name}.{uuid.uuid4().hex}.old"
            version_dir.rename(retired)
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version_dir


ExtraFile = bytes | Path | Callable[[Path], None]


def write_extra_files(version_dir: Path, files: Mapping[str, ExtraFile]) -> None:
    """Files under a (staging) version's assets.extra/, which TF Serving ignores: bytes are written, a Path is linked
    (copied where links are not possible: a file a new version keeps costs no space), a callable writes its file."""
    root = (Path(version_dir) / "assets.extra").resolve()
    for relative, content in files.items():
        target = (root / relative).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"extra file {relative!r} would land outside assets.extra")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, Path):
            link_or_copy(content, target)
        else:
            content(target)


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link of ``source`` at ``target``, or a copy where the file system cannot link."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of the folder ``source`` made of hard links (copies where links are not possible)."""
    for folder, _, files in os.walk(source):
        relative = Path(folder).relative_to(source)
        (target / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            link_or_copy(Path(folder) / name, target / relative / name)
