"""IVF galleries end to end: build-index --search ivf, served and searched on both backends, check-models, shards,
the training kept across versions (or trained again), and what --search auto picks."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from flask import Flask

from app import create_app
from app.gallery import publish
from app.gallery.build import BuildRequest, build_gallery
from app.gallery.record import MANIFEST_FILE, RECORD_DIR, read_manifest, read_names, read_record
from app.modelzoo import ivf
from app.modelzoo.demo import demo_pipeline, write_demo_gallery
from app.modelzoo.search import SEARCH_SIGNATURE
from app.serving.local_backend import LocalBackend
from tests.support.galleries import descriptor_file, gateways, jpeg_bytes, sharded_serving
from tests.support.gateway import demo_serving_dir
from tests.support.search_servables import LoadedSearch

SEARCH = "latent_search_model"
TRAINING = Path(RECORD_DIR) / publish.IVF_TRAINING_FILE


@pytest.fixture(scope="module")
def demo_faces(demo_root: Path):
    """The demo gallery's record (22 faces of the sample photos, encoded by the demo encoder)."""
    return read_record(demo_root / SEARCH / "1")


@pytest.fixture
def serving_dir(tmp_path: Path, demo_root: Path) -> Path:
    return demo_serving_dir(tmp_path, demo_root)


@pytest.fixture
def root(serving_dir: Path) -> Path:
    return serving_dir.parent / "serving_models"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_gallery(tmp_path_factory.mktemp("photos")) / "samples"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LocalBackend]:
    """The demo encoder alone, loaded once: imported descriptors are checked against its latent shape."""
    config = tmp_path_factory.mktemp("encoder") / "models.config"
    name = "twingan_latent_encoder"
    block = f'config {{ name: "{name}" base_path: "{demo_root / name}" model_platform: "tensorflow" }}'
    config.write_text(f"model_config_list {{ {block} }}", encoding="utf-8")
    with LocalBackend(config, poll_interval=0, warmup=False) as backend:
        yield backend


@pytest.fixture
def build(encoder: LocalBackend, root: Path):
    """build-index with descriptors, as a function of the request's fields (and of another pipeline file)."""

    def run(config=None, **request):
        return build_gallery(BuildRequest(**request), encoder, config or demo_pipeline(), root)

    return run


@pytest.fixture(params=["local", "grpc"])
def gateway(request, serving_dir: Path) -> Iterator:
    """A gateway factory over serving_dir on the parametrised backend, made when the test has arranged the folder."""
    with gateways(request.param, serving_dir) as make:
        yield make


def _stored_probes(version: Path) -> int:
    """The probes default stored with a version's search signature."""
    loaded = LoadedSearch(version)
    try:
        return int(tf.make_ndarray(loaded.meta_graph.signature_def[SEARCH_SIGNATURE].defaults["probes"]))
    finally:
        loaded.close()


def _search_photo(app: Flask, photo: Path, k: int = 3) -> dict:
    answer = app.test_client().post(
        f"/api/v1/search?k={k}", data={"image_file": (io.BytesIO(jpeg_bytes(photo)), "a.jpg")}
    )
    assert answer.status_code == 200, answer.json
    return answer.json


def test_build_index_search_ivf_is_served_checked_and_finds_the_person(gateway, serving_dir, root, tmp_path, demo_faces,
                                                                      photos):  # fmt: skip
    builder = create_app({"model_config": serving_dir, "poll_interval": 0, "warmup": False})
    try:
        path = descriptor_file(tmp_path / "faces.npz", demo_faces)
        built = builder.test_cli_runner().invoke(args=["build-index", "--descriptors", str(path), "--search", "ivf"])
    finally:
        builder.extensions["serving"].close()
    assert built.exit_code == 0, built.output
    lists = ivf.default_lists(522)
    probes = ivf.default_probes(lists)
    assert f"522 faces in {root / SEARCH / '2'} (ivf, {lists} lists, {probes} probes)" in built.output
    # The manifest, written inside the export, already says the lists and probes the version searches with.
    manifest = read_manifest(root / SEARCH / "2")
    assert manifest.search == {"kind": "ivf", "lists": lists, "probes": probes}
    assert ivf.IvfTraining.from_bytes((root / SEARCH / "2" / TRAINING).read_bytes()).lists == lists
    assert _stored_probes(root / SEARCH / "2") == probes

    app = gateway()
    checked = app.test_cli_runner().invoke(args=["check-models"])
    assert checked.exit_code == 0, checked.output
    assert "every stage fits" in checked.output
    for photo in ("sample3.jpg", "sample1.jpg"):
        answer = _search_photo(app, photos / photo)
        assert answer["gallery_version"] == 2
        assert answer["matches"][0]["filename"].startswith(f"people/samples/{photo}-face"), answer["matches"]


def test_a_sharded_ivf_gallery_is_served_and_numbers_faces_across_shards(gateway, serving_dir, root, build, tmp_path,
                                                                         demo_faces, photos):  # fmt: skip
    result = build(descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces), search="ivf", shards=2)
    assert [shard.servable for shard in result.published.shards] == [f"{SEARCH}_0", f"{SEARCH}_1"]
    for shard in result.published.shards:
        manifest = read_manifest(shard.version_dir)
        assert manifest.search["kind"] == "ivf" and manifest.search == shard.search
        assert manifest.search["lists"] == ivf.default_lists(shard.faces)
        assert (shard.version_dir / TRAINING).is_file()
    sharded_serving(serving_dir, 2)
    app = gateway()
    checked = app.test_cli_runner().invoke(args=["check-models"])
    assert checked.exit_code == 0, checked.output
    shard_names = [read_names(root / f"{SEARCH}_{index}" / "2") for index in range(2)]
    answer = _search_photo(app, photos / "sample3.jpg", k=40)
    assert answer["matches"][0]["filename"].startswith("people/samples/sample3.jpg-face")
    # Index = position * shards + shard, as in exact search: each index names its own shard's face.
    for match in answer["matches"]:
        assert shard_names[match["index"] % 2][match["index"] // 2] == match["filename"]
    assert {match["index"] % 2 for match in answer["matches"]} == {0, 1}


def test_adding_faces_keeps_the_parents_training_unless_retrain(root, build, tmp_path, demo_faces) -> None:
    build(descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces), search="ivf")
    trained = (root / SEARCH / "2" / TRAINING).read_bytes()
    more = descriptor_file(tmp_path / "more.npz", None, extra=30, seed=7, prefix="newcomer")
    added = build(descriptors=more, add=True, probes=3)
    assert added.added == 30 and added.published.shards[0].search == {
        "kind": "ivf",
        "lists": ivf.IvfTraining.from_bytes(trained).lists,
        "probes": 3,
    }
    assert (root / SEARCH / "3" / TRAINING).read_bytes() == trained  # kept, not trained again
    assert len(read_names(root / SEARCH / "3")) == 552
    assert _stored_probes(root / SEARCH / "3") == 3
    loaded = LoadedSearch(root / SEARCH / "3")
    try:
        # Each newcomer finds itself first.
        faces, _ = read_record(root / SEARCH / "3")
        found = loaded.search(faces.descriptors[-30:], 1)
        np.testing.assert_array_equal(found["indices"][:, 0], np.arange(522, 552))
    finally:
        loaded.close()
    retrained = build(search="ivf", retrain=True)
    assert retrained.published.version == 4
    training = ivf.IvfTraining.from_bytes((root / SEARCH / "4" / TRAINING).read_bytes())
    assert (root / SEARCH / "4" / TRAINING).read_bytes() != trained and training.gallery_faces == 552
    assert read_manifest(root / SEARCH / "4").search["lists"] == training.lists


def test_auto_picks_exact_below_auto_ivf_from_and_ivf_from_there(
    root, build, tmp_path, demo_faces, monkeypatch
) -> None:
    monkeypatch.setattr(publish, "AUTO_IVF_FROM", 300)
    small = build(descriptors=descriptor_file(tmp_path / "small.npz", demo_faces, extra=277), search="auto")
    assert small.published.faces == 299 and small.published.shards[0].search == {"kind": "exact"}
    large = build(descriptors=descriptor_file(tmp_path / "large.npz", demo_faces, extra=278), search="auto")
    assert large.published.faces == 300 and large.published.shards[0].search["kind"] == "ivf"
    assert not (root / SEARCH / "2" / TRAINING).exists() and (root / SEARCH / "3" / TRAINING).is_file()
    # The manifest file of each version says the same.
    for version, kind in (("2", "exact"), ("3", "ivf")):
        assert f'"kind": "{kind}"' in (root / SEARCH / version / RECORD_DIR / MANIFEST_FILE).read_text()
