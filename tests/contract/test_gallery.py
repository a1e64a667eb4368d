"""A gallery that lives: versions derived from the record, faces added and erased, descriptors, shards, resume."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from skimage import data

from app import create_app
from app.gallery import changes
from app.gallery.build import BuildRequest, build_gallery
from app.gallery.indexing import Interrupted, collect_faces, work_folder
from app.gallery.record import read_names, read_record
from app.modelzoo.demo import demo_pipeline, write_demo_gallery
from app.pipeline_config import parse_pipeline_config
from app.serving.layout import list_versions
from app.serving.local_backend import LocalBackend
from app.thumbnails import thumbnail_name
from tests.support.galleries import descriptor_file, gateways, jpeg_bytes, sharded_serving
from tests.support.gateway import PIPELINE_FILE, demo_serving_dir

SEARCH = "latent_search_model"


@pytest.fixture(scope="module")
def demo_faces(demo_root: Path):
    """The demo gallery's record (22 faces of the sample photos, encoded by the demo encoder)."""
    return read_record(demo_root / SEARCH / "1")


@pytest.fixture
def serving_dir(tmp_path: Path, demo_root: Path) -> Path:
    return demo_serving_dir(tmp_path, demo_root)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LocalBackend]:
    """The demo detector and encoder, loaded once: what build-index finds and encodes faces with (read only)."""
    config = tmp_path_factory.mktemp("builder") / "models.config"
    blocks = "".join(
        f'config {{ name: "{name}" base_path: "{demo_root / name}" model_platform: "tensorflow" }} '
        for name in ("face_detection", "twingan_latent_encoder")
    )
    config.write_text(f"model_config_list {{ {blocks}}}", encoding="utf-8")
    with LocalBackend(config, poll_interval=0, warmup=False) as backend:
        yield backend


def _build(backend, root: Path, config=None, **request):
    return build_gallery(BuildRequest(**request), backend, config or demo_pipeline(), root)


def _photo(tmp_path: Path, name: str, pixels: np.ndarray) -> Path:
    path = tmp_path / "new" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=92)
    return tmp_path / "new"


def test_every_version_carries_its_record_and_the_servable_is_derived_from_it(demo_root: Path, demo_faces) -> None:
    faces, manifest = demo_faces
    assert len(faces) == 22 and manifest.search == {"kind": "exact"} and manifest.latent_shape == [128]
    assert all(name.startswith("samples/sample") and "#" in name for name in faces.names)
    assert all(source == name.partition("#")[0] for source, name in zip(faces.sources, faces.names, strict=True))
    assert np.all(faces.scores >= 0.7) and np.all((faces.boxes >= 0) & (faces.boxes <= 1))
    assert faces.encoder_of(0) == "twingan_latent_encoder@1"
    for name in faces.names:
        assert (demo_root / SEARCH / "1" / "assets.extra" / thumbnail_name(name)).is_file()


def test_adding_encodes_only_the_new_photos_and_keeps_the_rest_bit_for_bit(builder, serving_dir, tmp_path) -> None:
    root = serving_dir.parent / "serving_models"
    folder = _photo(tmp_path, "astronaut/portrait.jpg", data.astronaut())
    result = _build(builder, root, folder=folder, add=True)
    assert result.report.photos == 1 and result.added == 1  # one photo encoded, not 7
    faces, manifest = read_record(root / SEARCH / "2")
    old, _ = read_record(root / SEARCH / "1")
    assert faces.names == [*old.names, "astronaut/portrait.jpg"] and manifest.parent == 1
    np.testing.assert_array_equal(faces.descriptors[:22], old.descriptors)
    kept = thumbnail_name(old.names[0])
    assert (root / SEARCH / "1" / "assets.extra" / kept).samefile(root / SEARCH / "2" / "assets.extra" / kept)
    # A name already in the gallery is refused, with the way to replace it; --replace swaps it.
    with pytest.raises(changes.GalleryChangeError, match="--replace"):
        _build(builder, root, folder=folder, add=True)
    replaced = _build(builder, root, folder=folder, add=True, replace=True)
    assert replaced.replaced == ["astronaut/portrait.jpg"] and len(read_names(root / SEARCH / "3")) == 23


def test_erasing_a_person_reaches_the_new_version_and_names_the_older_ones(builder, serving_dir) -> None:
    root = serving_dir.parent / "serving_models"
    before = read_names(root / SEARCH / "1")
    person = [name for name in before if name.startswith("samples/sample1.jpg#")]
    result = _build(builder, root, remove=["samples/sample1.jpg#*"])
    assert sorted(result.removed) == sorted(person) and result.published.version == 2
    after = read_names(root / SEARCH / "2")
    assert after == [name for name in before if name not in person]
    for name in person:
        assert not (root / SEARCH / "2" / "assets.extra" / thumbnail_name(name)).exists()
    assert result.older_holding == {1: len(person)}
    # A pattern that matches nothing is refused, and so is emptying the gallery.
    with pytest.raises(changes.GalleryChangeError, match="match no face"):
        _build(builder, root, remove=["samples/nobody.jpg"])
    with pytest.raises(changes.GalleryChangeError, match="empty"):
        _build(builder, root, remove=["*"])


def test_retiring_older_versions_refuses_what_is_still_served(serving_dir, builder) -> None:
    root = serving_dir.parent / "serving_models"
    _build(builder, root, remove=["samples/sample1.jpg#1"])
    app = create_app({"model_config": serving_dir, "poll_interval": 0, "warmup": False})
    try:
        runner = app.test_cli_runner()
        refused = runner.invoke(args=["retire-versions", SEARCH, "--versions", "2"])
        assert refused.exit_code != 0 and "still served by its version policy (latest 1)" in refused.output
        retired = runner.invoke(args=["retire-versions", SEARCH, "--versions", "1"])
        assert retired.exit_code == 0, retired.output
        assert list_versions(root / SEARCH) == [2]
    finally:
        app.extensions["serving"].close()


def test_cli_erasure_prints_counts_older_versions_and_one_audit_line(serving_dir, caplog) -> None:
    app = create_app({"model_config": serving_dir, "poll_interval": 0, "warmup": False})
    try:
        with caplog.at_level("INFO", logger="app.gallery.audit"):
            result = app.test_cli_runner().invoke(args=["build-index", "--remove", "samples/sample2.jpg#*"])
    finally:
        app.extensions["serving"].close()
    assert result.exit_code == 0, result.output
    assert "removed 3 faces" in result.output
    assert "older versions on disk still hold these faces: 1 (3)" in result.output
    assert "retire-versions latent_search_model --versions 1" in result.output
    audit = [record.getMessage() for record in caplog.records if record.name == "app.gallery.audit"]
    assert len(audit) == 1 and "faces_removed=3" in audit[0] and "sample2" not in audit[0]


# -- descriptors and shards through the gateway ----------------------------------------------------


@pytest.fixture(params=["local", "grpc"])
def gateway(request, serving_dir: Path) -> Iterator:
    """A gateway factory over serving_dir on the parametrised backend, made when the test has arranged the folder."""
    with gateways(request.param, serving_dir) as make:
        yield make


def test_a_gallery_from_descriptors_serves_and_finds_each_person(gateway, builder, serving_dir, tmp_path, demo_faces):
    root = serving_dir.parent / "serving_models"
    result = _build(builder, root, descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces), search="exact")
    assert result.published.faces == 522 and read_record(root / SEARCH / "2")[0].encoder_of(0) == "import"
    client = gateway().test_client()
    photos = write_demo_gallery(tmp_path / "photos") / "samples"
    answer = client.post(
        "/api/v1/search?k=3", data={"image_file": (io.BytesIO(jpeg_bytes(photos / "sample3.jpg")), "a.jpg")}
    )
    assert answer.status_code == 200, answer.json
    assert answer.json["gallery_version"] == 2
    assert answer.json["matches"][0]["filename"].startswith("people/samples/sample3.jpg-face")


def _search_config(serving_dir: Path, names: list[str]) -> Path:
    """A serving config of the search servables alone (what the shard tests call: no detector to load)."""
    config = serving_dir.parent / "search.config"
    blocks = "".join(
        f'config {{ name: "{name}" base_path: "/models/{name}" model_platform: "tensorflow" }} ' for name in names
    )
    config.write_text(f"model_config_list {{ {blocks}}}", encoding="utf-8")
    return config


@pytest.fixture(params=["local", "grpc"])
def search_backend(request) -> Iterator:
    """A factory of backends over a config (the double without warmup for grpc); closed after the test."""
    from app.serving.grpc_backend import GrpcBackend
    from tests.support.double import TFServingDouble

    made = []

    def make(config: Path, **options):
        if request.param == "local":
            backend = LocalBackend(config, poll_interval=0, warmup=False)
        else:
            double = TFServingDouble(config, poll_interval=0, warmup=False).start()
            made.append(double)
            backend = GrpcBackend(double.address, **options)
        made.append(backend)
        return backend

    yield make
    for item in reversed(made):
        item.close()


def _pipelines(backend, shards: int, *, partial: bool = False):
    """Pipelines over one backend: the whole gallery's and the sharded one's."""
    from app.pipeline import Pipeline

    names = ", ".join(f'"{SEARCH}_{index}"' for index in range(shards))
    base = PIPELINE_FILE.read_text(encoding="utf-8")
    sharded = base.replace("[search]", f"[search]\nshards = [{names}]\npartial = {str(partial).lower()}", 1)
    return Pipeline(backend, parse_pipeline_config(base)), Pipeline(backend, parse_pipeline_config(sharded))


@pytest.mark.parametrize("shards", [2, 3])
def test_a_sharded_gallery_answers_as_the_whole_one(search_backend, builder, serving_dir, tmp_path, demo_faces, shards):
    root = serving_dir.parent / "serving_models"
    descriptors = descriptor_file(tmp_path / "faces.npz", demo_faces, extra=300)
    _build(builder, root, descriptors=descriptors, search="exact")  # the whole gallery, version 2
    result = _build(builder, root, descriptors=descriptors, search="exact", shards=shards)
    assert [shard.servable for shard in result.published.shards] == [f"{SEARCH}_{i}" for i in range(shards)]
    assert sum(shard.faces for shard in result.published.shards) == 322
    backend = search_backend(_search_config(serving_dir, [SEARCH, *(f"{SEARCH}_{i}" for i in range(shards))]))
    whole, sharded = _pipelines(backend, shards)
    assert sharded.gallery_size() == whole.gallery_size() == 322
    faces, _ = demo_faces
    for latent in faces.descriptors[:8]:
        one, split = whole.search(latent, 10), sharded.search(latent, 10)
        assert [m.filename for m in split.matches] == [m.filename for m in one.matches]
        np.testing.assert_allclose([m.distance for m in split.matches], [m.distance for m in one.matches], atol=1e-5)
        assert split.missing == ()
    # Indices are position * shards + shard: apart across shards, each shard's own.
    indices = [m.index for m in sharded.search(faces.descriptors[0], 50).matches]
    assert len(set(indices)) == 50 and {i % shards for i in indices} == set(range(shards))


@pytest.mark.parametrize("partial", [False, True])
def test_a_shard_that_is_down_is_named(builder, serving_dir, tmp_path, demo_faces, partial):
    from app.errors import ServingUnavailable
    from app.serving.grpc_backend import GrpcBackend
    from tests.support.double import TFServingDouble

    root = serving_dir.parent / "serving_models"
    _build(
        builder,
        root,
        descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces, extra=100),
        search="exact",
        shards=2,
    )
    config = _search_config(serving_dir, [f"{SEARCH}_0", f"{SEARCH}_1"])
    with (
        TFServingDouble(config, poll_interval=0, warmup=False) as double,
        GrpcBackend(double.address, max_attempts=1) as backend,
    ):
        _, pipeline = _pipelines(backend, 2, partial=partial)
        pipeline.gallery_size()  # sizes known while both shards answer
        double.fail_servables[f"{SEARCH}_1"] = grpc.StatusCode.UNAVAILABLE
        latent = demo_faces[0].descriptors[0]
        if partial:
            found = pipeline.search(latent, 5)
            assert found.missing == (f"{SEARCH}_1",) and len(found.matches) == 5
        else:
            with pytest.raises(ServingUnavailable, match=f"shard {SEARCH}_1 did not answer") as caught:
                pipeline.search(latent, 5)
            assert caught.value.status_code == 503


def test_erasing_from_a_sharded_gallery_rewrites_only_its_shard(builder, serving_dir, tmp_path, demo_faces):
    root = serving_dir.parent / "serving_models"
    _build(
        builder,
        root,
        descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces, extra=200),
        search="exact",
        shards=2,
    )
    sharded_serving(serving_dir, 2, partial=False)
    config = parse_pipeline_config((serving_dir.parent / "pipeline.toml").read_text(), source="pipeline.toml")
    result = _build(builder, root, config=config, remove=["people/samples/sample1.jpg-face1"])
    changed = [shard.servable for shard in result.published.shards if not shard.linked]
    assert len(changed) == 1 and len(result.removed) == 1
    untouched = next(shard for shard in result.published.shards if shard.linked)
    for file in ("variables/variables.data-00000-of-00001", "saved_model.pb"):
        assert (root / untouched.servable / "2" / file).samefile(root / untouched.servable / "3" / file)


# -- indexing at speed -----------------------------------------------------------------------------


def test_an_interrupted_run_resumes_where_it_stopped(builder, tmp_path) -> None:
    folder = write_demo_gallery(tmp_path / "photos") / "samples"
    work = work_folder(tmp_path / "index", folder, {"all_faces": True})
    stop = threading.Event()
    seen = []

    def stop_after_two(state) -> None:
        seen.append(state.done)
        if state.done >= 2:
            stop.set()

    with pytest.raises(Interrupted) as caught:
        collect_faces(folder, builder, config=demo_pipeline(), all_faces=True, work=work, progress=stop_after_two,
                      stop=stop, workers=1)  # fmt: skip
    assert 2 <= caught.value.done < 6 and list(work.glob("chunk-*.npz"))
    resumed = collect_faces(folder, builder, config=demo_pipeline(), all_faces=True, work=work, resume=True)
    assert resumed.report.resumed == caught.value.done
    whole = collect_faces(folder, builder, config=demo_pipeline(), all_faces=True)
    assert resumed.faces.names == whole.faces.names
    np.testing.assert_allclose(resumed.faces.descriptors, whole.faces.descriptors, atol=1e-6)
    assert not work.exists()  # a finished run leaves no work behind


def test_each_shard_can_be_on_its_own_server(builder, serving_dir, tmp_path, demo_faces):
    """GATEWAY_SERVABLE_TARGETS: a shard served by another TF Serving is called there, the rest at the default."""
    from app.serving.grpc_backend import GrpcBackend
    from tests.support.double import TFServingDouble

    root = serving_dir.parent / "serving_models"
    _build(
        builder,
        root,
        descriptors=descriptor_file(tmp_path / "faces.npz", demo_faces, extra=50),
        search="exact",
        shards=2,
    )
    config = _search_config(serving_dir, [f"{SEARCH}_0", f"{SEARCH}_1"])
    with (
        TFServingDouble(config, poll_interval=0, warmup=False) as main,
        TFServingDouble(config, poll_interval=0, warmup=False, name="shard-1") as other,
        GrpcBackend(main.address, servable_targets={f"{SEARCH}_1": other.address}) as backend,
    ):
        _, pipeline = _pipelines(backend, 2)
        assert len(pipeline.search(demo_faces[0].descriptors[0], 5).matches) == 5
        assert {m.index % 2 for m in pipeline.search(demo_faces[0].descriptors[0], 40).matches} == {0, 1}
        assert other.calls["Predict"] >= 1 and main.calls["Predict"] >= 1
