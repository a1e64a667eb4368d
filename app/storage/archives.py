"""Unpacking a pulled .tar.gz, .tgz or .zip, refusing every member that would land outside its folder.

An archive from a URI is someone else's file. Before anything is written, every member is checked: an absolute
name, a ``..`` step, a link that points outside (or to an absolute path), a device or a pipe refuse the whole
archive. tarfile's own ``data`` filter then extracts (and would refuse the same again). zipfile has no links and
quietly rewrites unsafe names instead of refusing them, so its names are checked here first too.
"""

from __future__ import annotations

import posixpath
import tarfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from app.storage.errors import PullError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def unpack(archive: Path, folder: Path, uri: str) -> None:
    """Unpack ``archive`` into ``folder`` (which exists); PullError if it is no archive or a member is unsafe."""
    try:
        if archive.name.lower().endswith(".zip"):
            _unpack_zip(archive, folder, uri)
        else:
            _unpack_tar(archive, folder, uri)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise PullError(uri, f"cannot be unpacked as {_kind(archive.name)}: {exc}") from None


def _kind(name: str) -> str:
    return "a zip archive" if name.lower().endswith(".zip") else "a gzip-compressed tar archive"


def _refuse(uri: str, member: str, why: str) -> PullError:
    return PullError(uri, f"archive member {member!r} {why}: the archive is refused, nothing was unpacked")


def unsafe_name(name: str) -> str | None:
    """Why a member or object name would land outside its folder, or None when it stays inside."""
    if not name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or name.startswith("\\"):
        return "has an absolute path"
    if PureWindowsPath(name).drive:
        return "names a drive"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "steps out of its folder with '..'"
    return None


def _unpack_tar(archive: Path, folder: Path, uri: str) -> None:
    with tarfile.open(archive, mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            why = unsafe_name(member.name)
            if why is None and (member.issym() or member.islnk()):
                why = _unsafe_link(member)
            if why is None and not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                why = "is a device or a pipe"
            if why:
                raise _refuse(uri, member.name, why)
        tar.extractall(folder, members=members, filter="data")


def _unsafe_link(member: tarfile.TarInfo) -> str | None:
    target = member.linkname
    if not target or posixpath.isabs(target):
        return f"is a link to the absolute path {target!r}"
    # A symbolic link is relative to its own folder, a hard link to the archive's root.
    start = posixpath.dirname(member.name) if member.issym() else ""
    resolved = posixpath.normpath(posixpath.join(start, target))
    if resolved == ".." or resolved.startswith("../"):
        return f"is a link pointing outside ({target!r})"
    return None


def _unpack_zip(archive: Path, folder: Path, uri: str) -> None:
    with zipfile.ZipFile(archive) as bundle:
        names = bundle.namelist()
        for name in names:
            why = unsafe_name(name)
            if why:
                raise _refuse(uri, name, why)
        bundle.extractall(folder)
