"""The demo model zoo end to end: export-models, serving every servable both ways, build-index, check-models."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from app import create_app
from app.modelzoo.cli import write_demo_gallery
from app.modelzoo.gallery import EmptyGallery, build_index, encode_faces, thumbnail_name
from app.serving.grpc_backend import GrpcBackend
from app.serving.local_backend import LocalBackend
from app.serving.runtime import WARMUP_FILE, list_versions
from app.stages import DEFAULT_STAGES
from tests.conftest import demo_serving_dir
from tests.tf_serving_double import TFServingDouble

pytestmark = pytest.mark.slow
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


@pytest.mark.parametrize("stage", sorted(DEFAULT_STAGES))
def test_every_servable_has_one_version_warmup_and_no_pyfunc(demo_root, stage):
    base = demo_root / DEFAULT_STAGES[stage].servable
    assert list_versions(base) == [1]
    assert (base / "1" / WARMUP_FILE).stat().st_size > 0
    assert _forbidden_ops(base / "1") == set()


def test_every_servable_loads_runs_warmup_and_is_available(demo_backend):
    # Loading ran every warmup record (the runtime fails a version whose warmup fails).
    for stage in DEFAULT_STAGES.values():
        assert [s.state for s in demo_backend.model_status(stage.servable)] == ["AVAILABLE"]


def test_served_detector_finds_the_astronaut(demo_backend):
    stage = DEFAULT_STAGES["detect"]
    out = demo_backend.predict(stage.ref(), {"input_images": _astronaut_input()})
    assert out["scores"][0, 0] >= 0.7
    ymin, xmin, ymax, xmax = out["boxes"][0, 0]
    assert 0.1 < ymin < ymax < 0.45 and 0.3 < xmin < xmax < 0.6


def test_served_encoder_search_and_translator_chain(demo_backend):
    encode, search, translate = (DEFAULT_STAGES[s] for s in ("encode", "search", "translate"))
    encoder_input = demo_backend.metadata(encode.ref()).inputs["input_images"]
    assert encoder_input.shape[1:] == (128, 128, 3)
    face = np.asarray(Image.fromarray(data.astronaut()[60:220, 150:310]).resize((128, 128)))
    latent = demo_backend.predict(encode.ref(), {"input_images": face[np.newaxis]})["output"]
    assert latent.shape == (1, 4096)
    found = demo_backend.predict(search.ref(), {"target_latent": latent, "k_num": np.int32(5)})
    assert found["indices"].shape == (1, 5)
    assert np.all(np.diff(found["xvals"][0]) >= 0)
    assert all(name.startswith(b"lfw/face_") for name in found["filenames"][0])
    size = demo_backend.predict(search.ref(signature="gallery_size"), {})
    assert int(size["size"]) == 100
    image = np.zeros((1, 256, 256, 3), np.float32)
    anime = demo_backend.predict(translate.ref(), {"input_images": image})["output_images"]
    assert anime.shape == (1, 256, 256, 3) and np.all(np.abs(anime) <= 1)


def _perturbed(face: np.ndarray) -> np.ndarray:
    """Resize x0.8, JPEG at quality 75, brightness +10 %."""
    image = Image.fromarray(face)
    image = image.resize((max(1, int(image.width * 0.8)), max(1, int(image.height * 0.8))), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=75)
    pixels = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) * 1.1
    return np.clip(pixels, 0, 255).astype(np.uint8)


def test_encoder_finds_each_lfw_face_again_after_perturbation(demo_backend, tmp_path):
    gallery = write_demo_gallery(tmp_path) / "lfw"
    faces = []
    for path in sorted(gallery.iterdir()):
        with Image.open(path) as image:
            faces.append(np.asarray(image.convert("RGB")))
    stored = encode_faces(demo_backend, faces)
    queries = encode_faces(demo_backend, [_perturbed(face) for face in faces])
    distances = (queries**2).sum(1)[:, None] - 2 * queries @ stored.T + (stored**2).sum(1)[None]
    found_itself = float(np.mean(distances.argmin(1) == np.arange(len(faces))))
    assert found_itself >= 0.95


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
    _write(folder / "coffee.jpg", data.coffee())  # a photo with no face
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.jpg").write_bytes(b"ignored")
    return folder


def test_build_index_reports_bad_files_and_writes_a_version(demo_backend, mixed_gallery, tmp_path):
    base = tmp_path / "latent_search_model"
    report = build_index(mixed_gallery, demo_backend, base)
    assert report.indexed == ["astronaut.jpg", "astronaut_small.webp", "people/camera.png"]
    assert [name for name, _ in report.unreadable] == ["broken.jpg"]
    assert report.no_face == ["coffee.jpg"]
    assert report.skipped == ["notes.txt"]
    assert report.version_dir == base / "1"
    for index in range(3):
        with Image.open(report.version_dir / "assets.extra" / thumbnail_name(index)) as thumbnail:
            assert thumbnail.size == (96, 96)
    # The same folder twice gives the same index, as the next version.
    again = build_index(mixed_gallery, demo_backend, base)
    assert again.version_dir == base / "2"
    assert _gallery_variables(base / "1") == _gallery_variables(base / "2")


def _gallery_variables(version_dir: Path) -> dict[str, list]:
    reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
    return {name: np.asarray(reader.get_tensor(name)).tolist() for name in reader.get_variable_to_shape_map()}


def test_build_index_on_empty_folder_is_refused(demo_backend, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyGallery, match="no photo"):
        build_index(tmp_path / "empty", demo_backend, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture
def cli_app(tmp_path, demo_root):
    app = create_app({"backend": "local", "model_config": demo_serving_dir(tmp_path, demo_root), "poll_interval": 0})
    yield app
    app.extensions["serving"].close()


def test_cli_build_index_then_served_as_new_version(cli_app, mixed_gallery):
    result = cli_app.test_cli_runner().invoke(args=["build-index", str(mixed_gallery)])
    assert result.exit_code == 0, result.output
    assert "indexed 3 faces" in result.output
    assert "unreadable: broken.jpg" in result.output
    assert "no face found: coffee.jpg" in result.output
    assert "skipped" in result.output and "notes.txt" in result.output
    base = cli_app.config["GATEWAY_SETTINGS"].model_config.parent / "serving_models" / "latent_search_model"
    assert list_versions(base) == [1, 2]


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


def test_cli_check_models_accepts_the_demo_models(cli_app):
    result = cli_app.test_cli_runner().invoke(args=["check-models"])
    assert result.exit_code == 0, result.output
    assert result.output.count("fits") == 4
    assert "in  input_images: uint8 [1,?,?,3]" in result.output


def test_cli_check_models_names_what_does_not_fit(tmp_path, demo_root, exported_models):
    config = demo_serving_dir(tmp_path, demo_root)
    models = config.parent / "serving_models"
    shutil.rmtree(models / "twingan_latent_encoder")
    shutil.copytree(exported_models / "half_plus", models / "twingan_latent_encoder")
    app = create_app({"backend": "local", "model_config": config, "poll_interval": 0})
    try:
        result = app.test_cli_runner().invoke(args=["check-models"])
    finally:
        app.extensions["serving"].close()
    assert result.exit_code != 0
    assert "encode: twingan_latent_encoder - PROBLEMS" in result.output
    assert "input input_images missing" in result.output
    assert "input x is not one the pipeline sends" in result.output


@pytest.mark.parametrize("k", [0, 101])
def test_search_refuses_bad_k_with_the_graphs_own_message(demo_backend, k):
    from app.errors import BadInput

    search = DEFAULT_STAGES["search"]
    latent = np.zeros((1, 4096), np.float32)
    with pytest.raises(BadInput, match=f"k_num {k} "):
        demo_backend.predict(search.ref(), {"target_latent": latent, "k_num": np.int32(k)})
