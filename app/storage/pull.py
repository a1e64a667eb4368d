"""A pull: list the source, fetch every file into a staging folder (retrying what is transient), then land it whole.

Where it lands:

- DEST does not exist: the staging folder is a hidden sibling (``.<dest>.pull-XXXX`` in DEST's parent, so on the
  same file system) and is renamed to DEST at the end: DEST appears complete or not at all.
- DEST is a folder already (a volume's mount point, ./serving_models): the staging folder is hidden inside it,
  and each top-level entry (a servable folder, or a version folder) is renamed into DEST whole. An entry already
  there is kept with ``if_missing`` (and then not fetched at all where the source can be listed), else replaced.

On any failure the staging folder, and any parent folder this pull created, is removed: nothing is left behind.
TF Serving ignores the hidden staging folder meanwhile (it loads only numbered version folders).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from app.storage.archives import is_archive, unpack
from app.storage.errors import PullError
from app.storage.sources import Listing, RemoteFile, Source, open_source

T = TypeVar("T")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class Retry:
    """How transient errors are retried: up to ``attempts`` tries, waiting ``first_delay`` seconds after the first
    failure and twice as long after each next one (at most ``max_delay``), with jitter (half to all of the wait)
    so that many pods starting at once do not retry in step."""

    attempts: int = 5
    first_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        wait = min(self.max_delay, self.first_delay * 2 ** (failures - 1))
        return wait * random.uniform(0.5, 1.0)

    def run(self, action: Callable[[], T], echo: Echo, sleep: Callable[[float], None] = time.sleep) -> T:
        for attempt in range(1, self.attempts + 1):
            try:
                return action()
            except PullError as exc:
                if not exc.transient or attempt == self.attempts:
                    if exc.transient and self.attempts > 1:
                        exc.what = f"{exc.what} (tried {self.attempts} times)"
                    raise
                wait = self.delay(attempt)
                echo(f"{exc}; trying again in {wait:.1f} s (attempt {attempt + 1} of {self.attempts})")
                sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises


@dataclass(frozen=True)
class PullReport:
    """What a pull did: the files and bytes that landed in DEST, the seconds it took, and the entries kept."""

    uri: str
    dest: Path
    files: int
    bytes: int
    seconds: float
    kept: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        kept = f"; kept {len(self.kept)} entr{'y' if len(self.kept) == 1 else 'ies'} already there" if self.kept else ""
        return (
            f"pulled {self.files} file{'' if self.files == 1 else 's'} ({format_bytes(self.bytes)}) from {self.uri} "
            f"into {self.dest} in {self.seconds:.1f} s{kept}"
        )


def format_bytes(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{count} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def pull(
    uri: str,
    dest: Path | str,
    *,
    if_missing: bool = False,
    retry: Retry | None = None,
    echo: Echo = print,
) -> PullReport:
    """Pull the model tree at ``uri`` into ``dest``; PullError (one line) when it cannot, leaving nothing behind."""
    started = time.monotonic()
    retry = retry or Retry()
    source = open_source(uri)  # an unknown scheme fails here, before anything is touched
    dest = Path(dest).absolute()
    if dest.exists() and not dest.is_dir():
        raise PullError(uri, f"cannot pull into {dest}: it is a file, not a folder")
    present = _entries(dest) if dest.is_dir() else set()

    listing = retry.run(source.list, echo)
    if not listing.files:
        raise PullError(uri, "holds no files")
    wanted = listing.files
    if if_missing and not listing.one_file:
        wanted = [f for f in listing.files if f.key.split("/", 1)[0] not in present]
        if not wanted:
            kept = tuple(sorted({f.key.split("/", 1)[0] for f in listing.files}))
            return PullReport(uri, dest, 0, 0, time.monotonic() - started, kept)

    with _staging(dest, uri) as staging:
        _fetch_all(source, listing, wanted, staging, retry, echo)
        files, size = _tree_size(staging)
        kept = _land(staging, dest, if_missing=if_missing, uri=uri)
    skipped = set(listing.files) - set(wanted)
    kept_entries = tuple(sorted(kept | {f.key.split("/", 1)[0] for f in skipped}))
    return PullReport(uri, dest, files, size, time.monotonic() - started, kept_entries)


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def _fetch_all(
    source: Source, listing: Listing, files: list[RemoteFile], staging: Path, retry: Retry, echo: Echo
) -> None:
    """Every file into ``staging``; a single archive is fetched beside it and unpacked into it."""
    if listing.one_file and is_archive(files[0].key):
        archive = staging.parent / f"{staging.name}-{files[0].key}"
        try:
            retry.run(lambda: source.fetch(files[0], archive), echo)
            unpack(archive, staging, source.uri)
        finally:
            archive.unlink(missing_ok=True)
        if not any(staging.iterdir()):
            raise PullError(source.uri, "the archive is empty")
        return
    for file in files:
        target = staging / file.key
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # "a" and "a/b" both objects: one cannot be a folder
            raise PullError(source.uri, f"{file.key!r} needs a folder where the source has a file") from None
        retry.run(lambda file=file, target=target: source.fetch(file, target), echo)


def _tree_size(folder: Path) -> tuple[int, int]:
    files = size = 0
    for root, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += (Path(root) / name).lstat().st_size
    return files, size


@contextlib.contextmanager
def _staging(dest: Path, uri: str) -> Iterator[Path]:
    """A hidden folder on DEST's file system, removed (with any parent this pull made) whatever happens."""
    created: list[Path] = []
    if dest.is_dir():
        where = dest
    else:
        where = dest.parent
        missing = [p for p in (where, *where.parents) if not p.exists()]
        try:
            where.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PullError(uri, f"cannot create {where}: {exc.strerror or exc}") from None
        created = missing  # deepest first
    prefix = f".{dest.name}.pull-" if where != dest else ".pull-"
    try:
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    except OSError as exc:
        _remove_empty(created)
        raise PullError(uri, f"cannot write into {where}: {exc.strerror or exc}") from None
    try:
        yield staging
    except OSError as exc:  # a full disk, a permission refused while writing
        raise PullError(uri, f"cannot write into {where}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not dest.exists():
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def _land(staging: Path, dest: Path, *, if_missing: bool, uri: str) -> set[str]:
    """Move what was fetched into DEST; returns the top-level entries that were kept as they were."""
    if not dest.exists():
        try:
            staging.rename(dest)  # the cleanup finds nothing left to remove
            return set()
        except OSError:
            if not dest.is_dir():
                raise
            # Another pull (a second replica) landed DEST first: go on as if it had been there.
    kept = set()
    for entry in sorted(staging.iterdir()):
        target = dest / entry.name
        if target.exists() or target.is_symlink():
            if if_missing:
                kept.add(entry.name)
                continue
            # Replaced: the old entry is moved aside (into the staging folder, removed with it), the new one in.
            target.rename(staging / f".replaced-{entry.name}")
        try:
            entry.rename(target)
        except OSError:
            if if_missing and target.exists():  # landed meanwhile by another pull
                kept.add(entry.name)
                continue
            raise
    return kept
