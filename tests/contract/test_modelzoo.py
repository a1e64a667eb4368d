"""The demo model zoo end to end: export-models, serving every servable both ways, build-index, check-models."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from app import create_app
from app.gallery.build import BuildRequest, build_gallery
from app.gallery.indexing import THUMBNAIL_SIZE, EmptyGallery, collect_faces
from app.gallery.record import read_names
from app.modelzoo.demo import demo_pipeline, write_demo_gallery
from app.pipeline_config import DEFAULT_PIPELINE
from app.serving.grpc_backend import GrpcBackend
from app.serving.layout import list_versions
from app.serving.local_backend import LocalBackend
from app.serving.warmup import WARMUP_FILE
from app.thumbnails import thumbnail_name
from tests.support.double import TFServingDouble
from tests.support.gateway import demo_serving_dir

pytestmark = pytest.mark.slow
DEMO_GALLERY_FACES = 22  # every face of the six sample photos
FORBIDDEN_OPS = {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory, demo_root: Path) -> Path:
    return demo_serving_dir(tmp_path_factory.mktemp("demo-config"), demo_root)


@pytest.fixture(scope="module", params=["local", "grpc"])
def demo_backend(request, demo_config: Path) -> Iterator:
    if request.param == "local":
        with LocalBackend(demo_config, poll_interval=0) as backend:
            yield backend
    else:
        with TFServingDouble(demo_config, poll_interval=0) as double, GrpcBackend(double.address) as backend:
            yield backend


def _astronaut_input() -> np.ndarray:
    return data.astronaut()[np.newaxis]


def _forbidden_ops(saved_model_dir: Path) -> set[str]:
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(str(saved_model_dir))
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops |= {node.op for node in meta_graph.graph_def.node}
        for function in meta_graph.graph_def.library.function:
            ops |= {node.op for node in function.node_def}
    return ops & FORBIDDEN_OPS


@pytest.mark.parametrize("stage", sorted(DEFAULT_PIPELINE))
def test_every_servable_has_one_version_warmup_and_no_pyfunc(demo_root, stage):
    base = demo_root / DEFAULT_PIPELINE[stage].servable
    assert list_versions(base) == [1]
    assert (base / "1" / WARMUP_FILE).stat().st_size > 0
    assert _forbidden_ops(base / "1") == set()


def test_every_servable_loads_runs_warmup_and_is_available(demo_backend):
    # Loading ran every warmup record (the runtime fails a version whose warmup fails).
    for stage in DEFAULT_PIPELINE.values():
        assert [s.state for s in demo_backend.model_status(stage.servable)] == ["AVAILABLE"]


def test_served_detector_finds_the_astronaut(demo_backend):
    stage = DEFAULT_PIPELINE["detect"]
    out = demo_backend.predict(stage.ref(), {"input_images": _astronaut_input()})
    assert out["scores"][0, 0] >= 0.7
    ymin, xmin, ymax, xmax = out["boxes"][0, 0]
    assert 0.1 < ymin < ymax < 0.45 and 0.3 < xmin < xmax < 0.6


def test_served_encoder_search_and_translator_chain(demo_backend):
    encode, search, translate = (DEFAULT_PIPELINE[s] for s in ("encode", "search", "translate"))
    encoder_input = demo_backend.metadata(encode.ref()).inputs["input_images"]
    assert encoder_input.shape[1:] == (150, 150, 3)
    face = np.asarray(Image.fromarray(data.astronaut()[60:220, 150:310]).resize((150, 150)))
    latent = demo_backend.predict(encode.ref(), {"input_images": face[np.newaxis]})["output"]
    assert latent.shape == (1, 128)
    np.testing.assert_allclose(np.linalg.norm(latent), 1.0, atol=1e-5)
    found = demo_backend.predict(search.ref(), {"target_latent": latent, "k_num": np.int32(5)})
    assert found["indices"].shape == (1, 5)
    assert np.all(np.diff(found["xvals"][0]) >= 0)
    assert all(name.startswith(b"samples/sample") and b".jpg#" in name for name in found["filenames"][0])
    size = demo_backend.predict(search.ref(signature="gallery_size"), {})
    assert int(size["size"]) == DEMO_GALLERY_FACES
    image = np.zeros((1, 256, 256, 3), np.float32)
    anime = demo_backend.predict(translate.ref(), {"input_images": image})["output_images"]
    assert anime.shape == (1, 256, 256, 3) and np.all(np.abs(anime) <= 1)


def _changed(photo: np.ndarray) -> np.ndarray:
    """The photo mirrored, turned 8 degrees, shrunk to 60 % and saved as JPEG at quality 40."""
    image = Image.fromarray(photo[:, ::-1]).rotate(8, resample=Image.Resampling.BILINEAR, expand=True)
    image = image.resize((int(image.width * 0.6), int(image.height * 0.6)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=40)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_each_demo_gallery_face_is_found_again_from_a_changed_copy_of_its_photo(demo_backend, tmp_path):
    # Each sample photo, mirrored, turned, shrunk and recompressed, is indexed as a second gallery; every
    # face of it must find its own original first in the demo gallery. The old encoder (BlazeFace
    # features) found 12 % of mirror images.
    changed = tmp_path / "changed"
    changed.mkdir()
    for photo in sorted((write_demo_gallery(tmp_path / "original") / "samples").iterdir()):
        Image.fromarray(_changed(np.asarray(Image.open(photo).convert("RGB")))).save(changed / photo.name)
    config = demo_pipeline()
    queries = collect_faces(changed, demo_backend, config=config, all_faces=True)
    assert len(queries.report.indexed) == DEMO_GALLERY_FACES
    search = DEFAULT_PIPELINE.search
    found = demo_backend.predict(search.ref(), {"target_latent": queries.faces.descriptors, "k_num": np.int32(1)})
    names = [name.decode() for name in found["filenames"][:, 0]]
    expected = []
    for entry in queries.report.indexed:  # mirrored: the n-th face from the left was the n-th from the right
        photo, number = entry.split("#")
        faces = sum(name.startswith(f"{photo}#") for name in queries.report.indexed)
        expected.append(f"samples/{photo}#{faces + 1 - int(number)}")
    right = np.mean([a == b for a, b in zip(names, expected, strict=True)])
    assert right >= 0.9, list(zip(names, expected, strict=True))


# -- build-index -----------------------------------------------------------------------------------


def _write(path: Path, pixels: np.ndarray, **save_options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_options)


@pytest.fixture
def mixed_gallery(tmp_path: Path) -> Path:
    folder = tmp_path / "gallery"
    _write(folder / "astronaut.jpg", data.astronaut(), quality=90)
    _write(folder / "people" / "camera.png", np.stack([data.camera()] * 3, axis=-1))
    _write(folder / "astronaut_small.webp", data.astronaut()[::2, ::2])
    _write(folder / "portrait.bmp", data.astronaut()[:300, 100:400])
    _write(folder / "coffee.jpg", data.coffee())  # a photo with no face
    _write(folder / "disguised.png", data.astronaut()[::4, ::4], format="GIF")  # a GIF by another name
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    return folder


def _build(folder: Path, backend, root: Path, **options):
    """build-index over a folder as a new gallery under root/latent_search_model; (report, version folder)."""
    result = build_gallery(BuildRequest(folder=folder, search="exact", **options), backend, demo_pipeline(), root)
    return result.report, result.published.shards[0].version_dir


def test_build_index_reports_bad_files_and_writes_a_version(demo_backend, mixed_gallery, tmp_path):
    base = tmp_path / "latent_search_model"
    report, version_dir = _build(mixed_gallery, demo_backend, tmp_path)
    assert report.indexed == ["astronaut.jpg", "astronaut_small.webp", "people/camera.png", "portrait.bmp"]
    reasons = dict(report.unreadable)
    assert sorted(reasons) == ["broken.jpg", "disguised.png"]
    assert "could not be decoded" in reasons["broken.jpg"]
    assert reasons["disguised.png"] == "not a JPEG, PNG, WebP or BMP image"
    assert report.no_face == ["coffee.jpg"]
    assert report.skipped == ["notes.txt"]
    assert version_dir == base / "1"
    for name in report.indexed:
        with Image.open(version_dir / "assets.extra" / thumbnail_name(name)) as thumbnail:
            assert thumbnail.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
            assert thumbnail.mode == "RGB"
            pixels = np.asarray(thumbnail, np.int16)
    colour = np.abs(pixels[..., 0] - pixels[..., 2]).mean()
    assert colour > 10  # the astronaut's thumbnail is in colour, not grey
    # The same folder twice gives the same index, as the next version.
    _, again = _build(mixed_gallery, demo_backend, tmp_path)
    assert again == base / "2"
    assert _gallery_variables(base / "1") == _gallery_variables(base / "2")


def test_build_index_all_faces_makes_an_entry_per_face(demo_backend, tmp_path):
    folder = write_demo_gallery(tmp_path / "gallery") / "samples"
    for extra in sorted(folder.iterdir())[2:]:
        extra.unlink()
    _write(folder / "zz_portrait.jpg", data.astronaut())
    report, version_dir = _build(folder, demo_backend, tmp_path / "index", all_faces=True)
    assert report.indexed == [*(f"sample1.jpg#{n}" for n in (1, 2, 3)), *(f"sample2.jpg#{n}" for n in (1, 2, 3)),
                              "zz_portrait.jpg#1"]  # fmt: skip
    assert read_names(version_dir) == report.indexed  # the record keeps every face, in the folder's order


def test_whole_image_keeps_small_pre_cropped_faces(demo_backend, tmp_path):
    folder = tmp_path / "faces"
    for n, face in enumerate(data.lfw_subset()[:3]):
        _write(folder / f"face_{n}.png", (face * 255).astype(np.uint8))
    report, _ = _build(folder, demo_backend, tmp_path / "index", whole_image=True)
    assert report.indexed == ["face_0.png", "face_1.png", "face_2.png"]


def _gallery_variables(version_dir: Path) -> dict[str, list]:
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    return {name: np.asarray(reader.get_tensor(name)).tolist() for name in reader.get_variable_to_shape_map()}


def test_build_index_on_empty_folder_is_refused(demo_backend, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyGallery, match="no photo"):
        _build(tmp_path / "empty", demo_backend, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("saved_model.pb"))


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_app(tmp_path, demo_root):
    app = create_app({"backend": "local", "model_config": demo_serving_dir(tmp_path, demo_root), "poll_interval": 0})
    yield app
    app.extensions["serving"].close()


def test_cli_build_index_then_served_as_new_version(cli_app, mixed_gallery):
    result = cli_app.test_cli_runner().invoke(args=["build-index", str(mixed_gallery)])
    assert result.exit_code == 0, result.output
    assert "encoded 4 faces from 7 photos" in result.output
    assert "unreadable: broken.jpg" in result.output
    assert "unreadable: disguised.png: not a JPEG, PNG, WebP or BMP image" in result.output
    assert "image/" not in result.output  # CLI words, not HTTP's
    assert "no face found: coffee.jpg" in result.output
    assert "skipped" in result.output and "notes.txt" in result.output
    base = cli_app.config["GATEWAY_SETTINGS"].model_config_file.parent / "serving_models" / "latent_search_model"
    assert list_versions(base) == [1, 2]


def test_cli_build_index_all_faces_and_whole_image_exclude_each_other(cli_app, mixed_gallery):
    result = cli_app.test_cli_runner().invoke(args=["build-index", "--all-faces", "--whole-image", str(mixed_gallery)])
    assert result.exit_code == 2
    assert "exclude each other" in result.output


def test_cli_build_index_empty_folder_fails_clearly(cli_app, tmp_path):
    (tmp_path / "nothing").mkdir()
    result = cli_app.test_cli_runner().invoke(args=["build-index", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert "no photo" in result.output


def test_cli_export_models_if_missing_keeps_what_is_there(cli_app):
    result = cli_app.test_cli_runner().invoke(args=["export-models", "--if-missing"])
    assert result.exit_code == 0, result.output
    assert result.output.count("already there, kept") == 4
    assert "wrote 0 servable(s)" in result.output


@pytest.mark.parametrize("k", [0, 101])
def test_search_refuses_bad_k_with_the_graphs_own_message(demo_backend, k):
    from app.errors import BadInput

    search = DEFAULT_PIPELINE["search"]
    latent = np.zeros((1, 128), np.float32)
    with pytest.raises(BadInput, match=f"k_num {k} "):
        demo_backend.predict(search.ref(), {"target_latent": latent, "k_num": np.int32(k)})
