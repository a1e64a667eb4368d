"""The gallery's record and the changes computed from it: faces added, replaced, erased; descriptors brought in."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from app.gallery import changes
from app.gallery.descriptors import DescriptorFileError, check_descriptors, read_descriptors
from app.gallery.publish import shard_of, split_into_shards
from app.gallery.record import Faces, Manifest, RecordError, read_names, read_record, write_record

RNG = np.random.default_rng(5)


def _faces(names: list[str], *, encoder: str = "encoder@1", dim: int = 8) -> Faces:
    return Faces.new(RNG.standard_normal((len(names), dim)).astype(np.float32), names, encoder=encoder)


def _version(root: Path, number: int, faces: Faces) -> Path:
    folder = root / "latent_search_model" / str(number)
    (folder / "saved_model.pb").parent.mkdir(parents=True, exist_ok=True)
    (folder / "saved_model.pb").write_bytes(b"")
    write_record(folder / "assets.extra" / "gallery", faces, Manifest(len(faces), list(faces.latent_shape),
                                                                       {"kind": "exact"}, []))  # fmt: skip
    return folder


def test_the_record_keeps_every_column_exactly(tmp_path: Path) -> None:
    names = ["ünï/cödé.jpg", "a/b.jpg#2", "x" * 300, "日本.png"]
    faces = Faces.new(
        RNG.standard_normal((4, 2, 3)).astype(np.float32),
        names,
        encoder="twingan_latent_encoder@7",
        sources=["ünï/cödé.jpg", "a/b.jpg", "", "日本.png"],
        boxes=RNG.random((4, 4)),
        scores=np.array([0.9, 0.8, np.nan, 0.7]),
        added=1_700_000_000,
    )
    folder = _version(tmp_path, 3, faces)
    back, manifest = read_record(folder)
    assert back.names == names and back.sources == faces.sources
    np.testing.assert_array_equal(back.descriptors, faces.descriptors)  # bit for bit
    np.testing.assert_array_equal(back.boxes, faces.boxes)
    np.testing.assert_array_equal(back.scores, faces.scores)
    assert back.added.tolist() == [1_700_000_000] * 4
    assert [back.encoder_of(i) for i in range(4)] == ["twingan_latent_encoder@7"] * 4
    assert manifest.count == 4 and manifest.latent_shape == [2, 3]
    assert read_names(folder) == names


def test_a_damaged_record_is_refused_with_its_path(tmp_path: Path) -> None:
    folder = _version(tmp_path, 1, _faces(["a.jpg"]))
    (folder / "assets.extra" / "gallery" / "faces.npz").write_bytes(b"not a zip")
    with pytest.raises(RecordError, match=r"faces.npz"):
        read_record(folder)


def test_faces_of_two_encoders_keep_which_made_which() -> None:
    merged = _faces(["a.jpg"], encoder="enc@1").plus(_faces(["b.jpg", "c.jpg"], encoder="enc@2"))
    assert [merged.encoder_of(i) for i in range(3)] == ["enc@1", "enc@2", "enc@2"]
    with pytest.raises(RecordError, match="another encoder"):
        merged.plus(_faces(["d.jpg"], dim=4))


def test_adding_refuses_a_name_the_gallery_holds_unless_replaced() -> None:
    gallery = _faces(["ann/1.jpg", "bob/1.jpg"])
    new = _faces(["bob/1.jpg", "cy/1.jpg"])
    with pytest.raises(changes.GalleryChangeError, match=r"1 of the new faces .*'bob/1.jpg'.*--replace"):
        changes.add(gallery, new)
    added, replaced = changes.add(gallery, new, replace=True)
    assert added.names == ["ann/1.jpg", "bob/1.jpg", "cy/1.jpg"] and replaced == ["bob/1.jpg"]
    np.testing.assert_array_equal(added.descriptors[1], new.descriptors[0])  # the new bob, not the old one
    with pytest.raises(changes.GalleryChangeError, match="more than once"):
        changes.add(gallery, _faces(["dee.jpg", "dee.jpg"]))


def test_removing_by_pattern() -> None:
    gallery = _faces(["ann/1.jpg", "ann/2.jpg", "annie/1.jpg", "bob/group.jpg#2"])
    removal = changes.remove(gallery, ["ann/*"])
    assert removal.removed == ["ann/1.jpg", "ann/2.jpg"]
    assert removal.faces.names == ["annie/1.jpg", "bob/group.jpg#2"]
    np.testing.assert_array_equal(removal.faces.descriptors, gallery.descriptors[2:])
    assert changes.remove(gallery, ["*#2"]).removed == ["bob/group.jpg#2"]
    with pytest.raises(changes.GalleryChangeError, match=r"match no face.*'nobody/\*'.*--allow-unmatched"):
        changes.remove(gallery, ["ann/*", "nobody/*"])
    assert changes.remove(gallery, ["ann/*", "nobody/*"], allow_unmatched=True).unmatched == ["nobody/*"]
    with pytest.raises(changes.GalleryChangeError, match=r"empty.*--allow-empty"):
        changes.remove(gallery, ["*"])
    assert len(changes.remove(gallery, ["*"], allow_empty=True).faces) == 0


def test_older_versions_holding_a_person_are_found(tmp_path: Path) -> None:
    _version(tmp_path, 1, _faces(["ann/1.jpg", "bob/1.jpg"]))
    _version(tmp_path, 2, _faces(["bob/1.jpg"]))
    _version(tmp_path, 3, _faces(["ann/1.jpg", "ann/2.jpg", "bob/1.jpg"]))
    bases = [tmp_path / "latent_search_model"]
    assert changes.versions_holding(bases, ["ann/*"], before=4) == {1: 1, 3: 2}
    assert changes.versions_holding(bases, ["ann/*"], before=3) == {1: 1}
    gallery = changes.current(bases)
    assert gallery is not None and gallery.version == 3 and gallery.faces.names[0] == "ann/1.jpg"


def test_a_version_without_a_record_cannot_be_changed(tmp_path: Path) -> None:
    (tmp_path / "latent_search_model" / "1").mkdir(parents=True)
    with pytest.raises(changes.GalleryChangeError, match=r"no gallery record.*build-index FOLDER"):
        changes.current([tmp_path / "latent_search_model"])


def test_the_audit_line_names_no_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.gallery.audit"):
        changes.audit_line("erasure", servables=["g"], version=4, patterns=["ann/*"], removed=2, older={1: 1, 3: 2})
    (line,) = [record.getMessage() for record in caplog.records]
    assert "faces_removed=2" in line and "older_versions_still_holding=1,3" in line and "new_version=4" in line
    assert "ann" not in line


def test_shards_by_name_do_not_depend_on_the_other_faces() -> None:
    names = [f"person{i}/photo.jpg" for i in range(200)]
    owners = [shard_of(name, 4) for name in names]
    assert set(owners) == {0, 1, 2, 3}
    assert [shard_of(name, 4) for name in names[::-1]] == owners[::-1]
    parts = split_into_shards(_faces(names), 4)
    assert sorted(name for part in parts for name in part.names) == sorted(names)
    assert all(part.names == [n for n in names if shard_of(n, 4) == index] for index, part in enumerate(parts))


# -- descriptors ---------------------------------------------------------------------------------


def test_a_descriptors_file_becomes_faces(tmp_path: Path) -> None:
    path = tmp_path / "faces.npz"
    vectors = RNG.standard_normal((3, 128)).astype(np.float32)
    np.savez(path, descriptors=vectors, names=np.array(["a", "b/c", "ü"]))
    faces = read_descriptors(path, latent_shape=[128])
    assert faces.names == ["a", "b/c", "ü"] and faces.encoder_names == ["import"]
    np.testing.assert_array_equal(faces.descriptors, vectors)


@pytest.mark.parametrize(
    ("descriptors", "names", "words"),
    [
        (np.zeros((2, 64), np.float32), np.array(["a", "b"]), "shape [64] but the encoder's latent is [128]"),
        (np.full((2, 128), np.nan, np.float32), np.array(["a", "b"]), "descriptor 0 ('a') holds NaN or infinity"),
        (np.zeros((3, 128), np.float32), np.array(["a", "b"]), "3 descriptors but 2 names"),
        (np.zeros((2, 128), np.float32), np.array(["a", "a"]), "more than once (e.g. 'a')"),
        (np.zeros((2, 128), np.float32), np.array(["a", " "]), "name 1 is empty"),
        (np.zeros((2, 128), np.float32), np.array([1, 2]), "names must be a 1-D text array"),
        (np.zeros(2, np.float32), np.array(["a", "b"]), "shaped [N, D]"),
        (np.zeros((0, 128), np.float32), np.array([], dtype=str), "no descriptors"),
    ],
)
def test_bad_descriptors_are_refused_in_one_line(descriptors, names, words) -> None:
    with pytest.raises(DescriptorFileError, match=__import__("re").escape(words)):
        check_descriptors(descriptors, names, latent_shape=[128])


def test_a_descriptors_file_with_python_objects_or_no_arrays_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, descriptors=np.zeros((1, 4), np.float32), names=np.array(["a"], dtype=object))
    with pytest.raises(DescriptorFileError, match="pickles are never loaded"):
        read_descriptors(pickled)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, vectors=np.zeros((1, 4), np.float32))
    with pytest.raises(DescriptorFileError, match="no array named descriptors or names"):
        read_descriptors(wrong)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DescriptorFileError, match=r"cannot be read as a numpy .npz"):
        read_descriptors(tmp_path / "text.npz")
