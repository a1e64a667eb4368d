"""The storage initializer's own rules, on local sources: where a pull lands, what --if-missing keeps, that a failure
leaves nothing behind, how transient errors are retried, and that no archive member or object escapes DEST."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from app.storage import PullError, Retry, pull
from app.storage.archives import unsafe_name
from app.storage.sources import LocalSource, RemoteFile, open_source, relative_key

QUIET = {"echo": lambda _line: None}


def model_tree(root: Path, servables: dict[str, bytes]) -> Path:
    """<servable>/1/saved_model.pb and a variables file, for each servable."""
    for name, content in servables.items():
        (root / name / "1" / "variables").mkdir(parents=True)
        (root / name / "1" / "saved_model.pb").write_bytes(content)
        (root / name / "1" / "variables" / "variables.data-00000-of-00001").write_bytes(content * 3)
    return root


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return model_tree(tmp_path / "source", {"face_detection": b"detector", "ugatit_selfie2anime": b"translator"})


# -- where it lands ---------------------------------------------------------------------------------------------


def test_a_new_folder_lands_whole_with_the_report(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "volume" / "models"  # the parents are made too
    report = pull(str(source), dest, **QUIET)
    assert files(dest) == files(source)
    assert (report.files, report.bytes) == (4, sum(len(b) for b in files(source).values()))
    assert report.kept == () and report.seconds >= 0
    assert "pulled 4 files (" in report.summary() and str(dest) in report.summary()
    assert leftovers(dest.parent) == []


def test_file_uris_and_plain_paths_are_the_same_source(tmp_path: Path, source: Path) -> None:
    pull(source.as_uri(), tmp_path / "a", **QUIET)
    pull(str(source), tmp_path / "b", **QUIET)
    assert files(tmp_path / "a") == files(tmp_path / "b") == files(source)


def test_into_an_existing_folder_each_entry_lands_and_the_rest_stays(tmp_path: Path, source: Path) -> None:
    """A volume's mount point, or ./serving_models with its README: the folder itself cannot be renamed."""
    dest = tmp_path / "serving_models"
    dest.mkdir()
    (dest / "README.md").write_text("keep me")
    pull(str(source), dest, **QUIET)
    assert files(dest) == {**files(source), "README.md": b"keep me"}
    assert leftovers(dest) == []


def test_if_missing_keeps_what_is_there_and_fetches_only_the_rest(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "models"
    pull(str(source), dest, **QUIET)
    (dest / "face_detection" / "1" / "saved_model.pb").write_bytes(b"changed by hand")
    (dest / "ugatit_selfie2anime").rename(tmp_path / "gone")

    report = pull(str(source), dest, if_missing=True, **QUIET)
    assert report.kept == ("face_detection",)
    assert report.files == 2  # only the translator's two files were fetched
    assert (dest / "face_detection" / "1" / "saved_model.pb").read_bytes() == b"changed by hand"
    assert files(dest / "ugatit_selfie2anime") == files(source / "ugatit_selfie2anime")

    again = pull(str(source), dest, if_missing=True, **QUIET)
    assert (again.files, again.kept) == (0, ("face_detection", "ugatit_selfie2anime"))


def test_without_if_missing_an_entry_there_is_replaced_whole(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "models"
    pull(str(source), dest, **QUIET)
    (dest / "face_detection" / "1" / "stale.txt").write_text("from an older pull")
    pull(str(source), dest, **QUIET)
    assert files(dest) == files(source)
    assert leftovers(dest) == []


def test_a_single_file_lands_under_its_own_name(tmp_path: Path) -> None:
    single = tmp_path / "labels.txt"
    single.write_text("face\nlatent\n")
    pull(str(single), tmp_path / "out", **QUIET)
    assert files(tmp_path / "out") == {"labels.txt": b"face\nlatent\n"}


# -- archives ---------------------------------------------------------------------------------------------------


def tarball(path: Path, members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path


def test_a_tarball_and_a_zip_are_unpacked(tmp_path: Path, source: Path) -> None:
    tree = files(source)
    for name in ("models.tar.gz", "models.tgz"):
        pull(str(tarball(tmp_path / name, tree)), tmp_path / f"from-{name}", **QUIET)
        assert files(tmp_path / f"from-{name}") == tree
    with zipfile.ZipFile(tmp_path / "models.zip", "w") as bundle:
        for key, content in tree.items():
            bundle.writestr(key, content)
    pull(str(tmp_path / "models.zip"), tmp_path / "from-zip", **QUIET)
    assert files(tmp_path / "from-zip") == tree
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("members", "links", "why"),
    [
        ({"/etc/cron.d/x": b"boom"}, None, "has an absolute path"),
        ({"models/../../outside.txt": b"boom"}, None, "steps out of its folder"),
        ({}, {"models/escape": (tarfile.SYMTYPE, "../../etc/passwd")}, "is a link pointing outside"),
        ({}, {"models/escape": (tarfile.SYMTYPE, "/etc/passwd")}, "is a link to the absolute path"),
        ({}, {"models/hard": (tarfile.LNKTYPE, "../outside")}, "is a link pointing outside"),
        ({}, {"models/fifo": (tarfile.FIFOTYPE, "")}, "is a device or a pipe"),
    ],
    ids=["absolute", "dot-dot", "symlink out", "absolute symlink", "hard link out", "fifo"],
)
def test_a_tar_member_escaping_dest_refuses_the_archive(
    tmp_path: Path, members: dict[str, bytes], links: dict | None, why: str
) -> None:
    archive = tarball(tmp_path / "evil.tar.gz", {"models/ok.txt": b"fine", **members}, links)
    dest = tmp_path / "out"
    with pytest.raises(PullError, match=why) as caught:
        pull(str(archive), dest, **QUIET)
    assert "refused, nothing was unpacked" in str(caught.value)
    assert not dest.exists() and not (tmp_path / "etc").exists() and not (tmp_path / "outside.txt").exists()
    assert leftovers(tmp_path) == []


def test_a_link_inside_the_archive_is_kept(tmp_path: Path) -> None:
    archive = tarball(tmp_path / "ok.tgz", {"models/a.txt": b"a"}, {"models/b.txt": (tarfile.SYMTYPE, "a.txt")})
    pull(str(archive), tmp_path / "out", **QUIET)
    assert (tmp_path / "out" / "models" / "b.txt").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["../outside.txt", "/abs.txt", "C:/windows.txt", "a/../../b.txt", "..\\x.txt"])
def test_a_zip_member_escaping_dest_refuses_the_archive(tmp_path: Path, name: str) -> None:
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as bundle:
        bundle.writestr("models/ok.txt", b"fine")
        bundle.writestr(zipfile.ZipInfo(name), b"boom")
    with pytest.raises(PullError, match="the archive is refused"):
        pull(str(tmp_path / "evil.zip"), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_a_damaged_archive_fails_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "models.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(PullError, match="cannot be unpacked as a gzip-compressed tar archive") as caught:
        pull(str(tmp_path / "models.tar.gz"), tmp_path / "out", **QUIET)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", ["/etc/passwd", "a/../../b", "a//b", "./a"])
def test_an_object_name_that_would_escape_dest_is_refused(key: str) -> None:
    with pytest.raises(PullError, match="refused"):
        relative_key("s3://bucket/models", key)
    assert relative_key("s3://bucket/models", "face/1/saved_model.pb") == "face/1/saved_model.pb"
    assert unsafe_name("face/1/variables/variables.index") is None


# -- failures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("ftp://host/models", "unknown scheme 'ftp://'"),
        ("hdfs://cluster/models", "unknown scheme 'hdfs://'"),
        ("s3://", "names no bucket"),
        ("gs:///models", "names no bucket"),
        ("http://127.0.0.1:9/", "names no file"),
        ("file://elsewhere/models", "names the host 'elsewhere'"),
        ("", "no source given"),
    ],
)
def test_a_source_that_cannot_be_read_is_refused_before_anything_is_touched(
    tmp_path: Path, uri: str, message: str
) -> None:
    with pytest.raises(PullError, match=message) as caught:
        pull(uri, tmp_path / "deep" / "models", **QUIET)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_halfway_leaves_nothing_behind(tmp_path: Path, source: Path, monkeypatch) -> None:
    fetched = []
    real_fetch = LocalSource.fetch

    def fail_on_the_third(self, file: RemoteFile, target: Path) -> None:
        fetched.append(file.key)
        if len(fetched) == 3:
            raise PullError(self.uri, "the disk went away")
        real_fetch(self, file, target)

    monkeypatch.setattr(LocalSource, "fetch", fail_on_the_third)
    dest = tmp_path / "new" / "parents" / "models"
    with pytest.raises(PullError, match="the disk went away"):
        pull(str(source), dest, **QUIET)
    assert not (tmp_path / "new").exists()  # the parents this pull made are gone too

    existing = tmp_path / "existing"
    existing.mkdir()
    fetched.clear()
    with pytest.raises(PullError):
        pull(str(source), existing, **QUIET)
    assert list(existing.iterdir()) == []


def test_an_empty_folder_is_an_error_not_an_empty_model(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PullError, match="holds no files"):
        pull(str(tmp_path / "empty"), tmp_path / "out", **QUIET)
    assert not (tmp_path / "out").exists()


def test_dest_that_is_a_file_is_refused(tmp_path: Path, source: Path) -> None:
    (tmp_path / "models").write_text("a file")
    with pytest.raises(PullError, match="it is a file, not a folder"):
        pull(str(source), tmp_path / "models", **QUIET)


def test_the_scheme_picks_the_transport() -> None:
    kinds = {uri: type(open_source(uri)).__name__ for uri in ("s3://b/p", "gs://b/p", "https://h/m.tgz", "/x", "x")}
    assert kinds == {
        "s3://b/p": "S3Source", "gs://b/p": "GcsSource", "https://h/m.tgz": "HttpSource",
        "/x": "LocalSource", "x": "LocalSource",
    }  # fmt: skip


# -- retries ----------------------------------------------------------------------------------------------------


class FailingFirst:
    """An action that raises ``error`` the first ``failures`` times, then answers."""

    def __init__(self, failures: int, error: PullError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


def test_transient_errors_are_retried_with_growing_waits() -> None:
    waits: list[float] = []
    lines: list[str] = []
    action = FailingFirst(3, PullError("s3://b/k", "the server answered 503", transient=True))
    assert Retry(attempts=5, first_delay=1.0).run(action, lines.append, sleep=waits.append) == "done"
    assert action.calls == 4
    assert [0.5 <= w <= 1.0 for w in waits[:1]] == [True] and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0
    assert lines[0].startswith("s3://b/k: the server answered 503; trying again in ")
    assert lines[-1].endswith("(attempt 4 of 5)")


def test_the_last_transient_failure_says_how_often_it_was_tried() -> None:
    action = FailingFirst(9, PullError("gs://b/k", "connection failed: Connection refused", transient=True))
    with pytest.raises(PullError, match=r"Connection refused \(tried 3 times\)"):
        Retry(attempts=3, first_delay=0).run(action, lambda _l: None, sleep=lambda _s: None)
    assert action.calls == 3


def test_a_permanent_error_is_not_retried() -> None:
    action = FailingFirst(1, PullError("s3://b/k", "access refused", hint="check AWS_ACCESS_KEY_ID"))
    with pytest.raises(PullError, match="access refused"):
        Retry(attempts=5, first_delay=0).run(action, lambda _l: None, sleep=lambda _s: None)
    assert action.calls == 1


def test_waits_never_pass_the_ceiling() -> None:
    retry = Retry(attempts=20, first_delay=1.0, max_delay=8.0)
    assert all(retry.delay(n) <= 8.0 for n in range(1, 20))
