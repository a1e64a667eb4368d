"""Bring your own models: servables exported the way users export them serve through the whole gateway, wired
only by a pipeline file, on both backends; and servables that do not fit are refused at start and by
check-models, each with its own message.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from PIL import Image
from skimage import data

from app import create_app
from app.pipeline import Photo, Pipeline
from app.pipeline_check import PipelineMisfit, check_pipeline, misfits_of
from app.pipeline_config import load_pipeline_config
from app.serving.local_backend import LocalBackend
from app.web.extensions import serving
from tests.support import conformance
from tests.support.double import TFServingDouble
from tests.support.gateway import CALL_TIMEOUT, gateway_settings
from tests.support.once import built_once

REPO = Path(__file__).resolve().parents[2]
GALLERY_FACES = 12  # LFW faces beside the astronaut: the gallery holds 13

# The users' servables, and the one pipeline file that wires them. Nothing else is configured.
SERVABLES = {
    "ssd_faces": "od_api_detector",
    "pixel_faces": "pixel_detector",
    "tf1_encoder": "tf1_encoder",
    "tutorial_search": "tutorial_search",
    "anime_generator": "generator",
    # Misfits: each does not fit the stage it is wired to in one case of the catalogue.
    "int64_encoder": "int64_encoder",
    "grey_encoder": "grey_encoder",
    "any_size_encoder": "any_size_encoder",
    "small_latent_encoder": "small_latent_encoder",
    "string_search": "string_search",
    "thresholded_search": "thresholded_search",
    "vector_generator": "vector_generator",
}
# What PIPELINE wires; a gateway is configured with these alone unless a test needs more (each servable the
# model server loads costs a test its load, and the detectors take seconds).
PIPELINE_SERVABLES = ("ssd_faces", "tf1_encoder", "tutorial_search", "anime_generator")
PIPELINE = """
[detect]
servable = "ssd_faces"
inputs = { image = "inputs" }
outputs = { boxes = "detection_boxes", scores = "detection_scores", count = "num_detections" }
threshold = 0.5

[encode]
servable = "tf1_encoder"
inputs = { image = "images" }
outputs = { latent = "embedding" }
image = { range = [-1, 1] }

[search]
servable = "tutorial_search"

[translate]
servable = "anime_generator"
signature = "translate"
inputs = { image = "real_A" }
outputs = { image = "fake_B" }
image = { range = [-1, 1] }
"""
PIXEL_DETECTOR = """
[detect]
servable = "pixel_faces"
signature = "detect"
inputs = { image = "image_bgr" }
outputs = { boxes = "rects", scores = "confidence" }
boxes = { order = "xyxy", units = "pixels" }
image = { range = [0, 1], channels = "BGR" }
threshold = 0.5
"""


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=92)
    return out.getvalue()


ASTRONAUT = _jpeg(data.astronaut())


def _config_text(names) -> str:
    blocks = "".join(
        f'  config {{ name: "{name}" base_path: "/models/{name}" model_platform: "tensorflow" }}\n' for name in names
    )
    return f"model_config_list {{\n{blocks}}}\n"


def _pipeline(text: str, replace: str = "") -> str:
    """The conformance pipeline file with whole stage tables replaced by those of ``replace``."""
    tables = {}
    for source in (text, replace):
        for block in source.split("\n["):
            block = block.strip().lstrip("[")
            if block:
                tables[block.split("]", 1)[0]] = "[" + block
    return "\n\n".join(tables.values()) + "\n"


@pytest.fixture(scope="session")
def user_models(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Path:
    """Every user servable exported once per run (every xdist worker reads the same); the tutorial's search model
    indexes faces the user's encoder encoded, the astronaut's among them (as cropped by the gateway from ASTRONAUT)."""
    return built_once(tmp_path_factory, "byom", lambda folder: _export_user_models(folder, demo_root)) / (
        "serving_models"
    )


def _export_user_models(folder: Path, demo_root: Path) -> None:
    root = folder / "serving_models"
    scratch = root.parent / "scratch"
    scratch.mkdir()
    demo_detector = demo_root / "face_detection" / "1"
    conformance.export_od_api_detector(root / "ssd_faces" / "1", demo_detector)
    conformance.export_pixel_detector(root / "pixel_faces" / "1", demo_detector)
    conformance.export_tf1_encoder(root / "tf1_encoder" / "1", scratch)
    conformance.export_generator(root / "anime_generator" / "1")
    for name, build in (
        ("int64_encoder", conformance.int64_image_encoder),
        ("grey_encoder", conformance.grey_encoder),
        ("any_size_encoder", conformance.any_size_encoder),
        ("small_latent_encoder", conformance.small_latent_encoder),
        ("string_search", conformance.string_distance_search),
        ("thresholded_search", conformance.thresholded_search),
        ("vector_generator", conformance.vector_generator),
    ):
        conformance.export_tf1_graph(root / name / "1", build)

    # The gallery: the user's own script crops and encodes faces; the gateway's crop of the astronaut is one.
    config = root.parent / "index.config"
    config.write_text(_config_text(["ssd_faces", "tf1_encoder"]), encoding="utf-8")
    (root.parent / "pipeline.toml").write_text(PIPELINE, encoding="utf-8")
    with LocalBackend(config, poll_interval=0, warmup=False) as backend:
        pipeline = Pipeline(backend, load_pipeline_config(root.parent / "pipeline.toml"))
        photo = pipeline.decode(ASTRONAUT)
        faces, _ = pipeline.detect_faces(photo)
        crop = pipeline.face_crop("encode", photo, faces[0], conformance.ENCODER_SIDE)
    lfw = [np.repeat((face * 255).astype(np.uint8)[..., None], 3, axis=2) for face in data.lfw_subset()[:GALLERY_FACES]]
    latents = conformance.encode_with_tf1_encoder([crop, *lfw])
    names = ["astronaut.jpg", *(f"lfw/face_{i:03d}.png" for i in range(GALLERY_FACES))]
    conformance.export_tutorial_search(root / "tutorial_search" / "1", latents, names, scratch / "gallery")
    config.unlink()


def _serving_dir(root: Path, user_models: Path, pipeline: str, servables=PIPELINE_SERVABLES) -> Path:
    """A config serving ``servables`` (copies of the users' own) beside ``pipeline`` as pipeline.toml."""
    for name in servables:
        shutil.copytree(user_models / name, root / "serving_models" / name)
    config = root / "serving_models.config"
    config.write_text(_config_text(servables), encoding="utf-8")
    (root / "pipeline.toml").write_text(pipeline, encoding="utf-8")
    return config


@pytest.fixture(scope="module", params=["local", "grpc"])
def byom_app(request, tmp_path_factory, user_models) -> Iterator[Flask]:
    """The gateway over the users' servables, wired by PIPELINE alone, on the local backend or through the double.

    The double serves pixel_faces too, for the pixel-detector gateways that share it (``pixel_app``)."""
    servables = PIPELINE_SERVABLES + (("pixel_faces",) if request.param == "grpc" else ())
    config = _serving_dir(tmp_path_factory.mktemp("byom-app"), user_models, PIPELINE, servables)
    settings, double = gateway_settings(request.param, config)
    app = create_app(settings)
    app.config["TESTING"] = True
    app.kind, app.double = request.param, double
    serving(app).start()  # the servables are checked against the pipeline file, as gunicorn does at boot
    yield app
    serving(app).close()
    if double is not None:
        double.close()


@pytest.fixture
def client(byom_app):
    return byom_app.test_client()


def _photo() -> dict:
    return {"image_file": (io.BytesIO(ASTRONAUT), "astronaut.jpg")}


# -- the users' servables through every surface ----------------------------------------------------


@pytest.mark.long(minutes=2)
def test_search_finds_the_indexed_face_first(client):
    response = client.post("/api/v1/search", data={**_photo(), "k": "3"})
    assert response.status_code == 200, response.json
    matches = response.json["matches"]
    assert len(matches) == 3  # k from the form field
    assert matches[0]["filename"] == "astronaut.jpg"
    assert matches[0]["distance"] < 1e-3 < matches[1]["distance"]
    assert [m["distance"] for m in matches] == sorted(m["distance"] for m in matches)
    assert matches[0]["thumbnail_url"].startswith("/api/v1/gallery/astronaut.jpg")


def test_search_k_from_the_query_and_a_raw_body(client):
    response = client.post("/api/v1/search?k=7", data=ASTRONAUT, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    assert len(response.json["matches"]) == 7


def test_k_beyond_the_gallery_is_the_models_own_readable_400(client):
    """No size signature: the graph's top_k says why, without its op-location preamble."""
    response = client.post("/api/v1/search?k=30", data=_photo())
    assert response.status_code == 400
    assert response.json["error"] == {
        "code": "bad_input",
        "message": "tutorial_search: input must have at least k columns. Had 13, needed 30",
    }


def test_translate_png_and_json(client):
    response = client.post("/api/v1/translate", data=_photo())
    assert response.status_code == 200, response.data[:200]
    anime = np.asarray(Image.open(io.BytesIO(response.data)))
    assert anime.shape == (conformance.GENERATOR_SIDE, conformance.GENERATOR_SIDE, 3)
    assert len(np.unique(anime.reshape(-1, 3), axis=0)) <= 5**3  # the generator's five levels a channel
    response = client.post("/api/v1/translate?format=json", data=_photo())
    assert response.status_code == 200
    assert response.json["anime_png_base64"]


def test_detect_reads_the_od_api_outputs(client):
    response = client.post("/api/v1/detect", data=_photo())
    assert response.status_code == 200, response.json
    faces = response.json["faces"]
    assert len(faces) == 1
    box = faces[0]["box"]
    # The astronaut's face, in the photo's normalised coordinates.
    assert 0.05 < box["ymin"] < box["ymax"] < 0.5 and 0.3 < box["xmin"] < box["xmax"] < 0.7


def test_the_page_and_its_json(client):
    page = client.post("/detect_face/image", data={**_photo(), "k": "2"}, headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert b"astronaut.jpg" in page.data
    answer = client.post("/detect_face/image?k=2", data=_photo(), headers={"Accept": "application/json"})
    assert answer.status_code == 200, answer.json
    assert answer.json["matches"][0]["filename"] == "astronaut.jpg"
    assert len(answer.json["matches"]) == 2
    assert all(m["thumbnail_url"] for m in answer.json["matches"])
    assert answer.json["anime_png_base64"]


def test_models_show_the_wiring_and_that_it_fits(client):
    body = client.get("/api/v1/models").json
    assert [entry["name"] for entry in body["servables"]] == [
        "ssd_faces",
        "tf1_encoder",
        "tutorial_search",
        "anime_generator",
    ]
    stages = body["pipeline"]["stages"]
    assert all(stage["fits"] for stage in stages.values()), stages
    assert stages["translate"]["inputs"] == {"image": "real_A"}
    assert stages["translate"]["image"]["range"] == [-1.0, 1.0]
    assert body["pipeline"]["source"].endswith("pipeline.toml")


def test_ready(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.json


def test_check_models_says_every_stage_fits(byom_app):
    result = byom_app.test_cli_runner().invoke(args=["check-models"])
    assert result.exit_code == 0, result.output
    assert result.output.count(" - fits") == 4
    assert "in  target_latent: float32 [1,4,4,256]" in result.output
    assert "every stage fits" in result.output
    report = json.loads(byom_app.test_cli_runner().invoke(args=["check-models", "--json"]).output)
    assert report["fits"] is True
    assert report["stages"]["search"]["request"]["said"].startswith("version 1: nearest ")


PIXEL_COUNTS = {
    "absent": PIXEL_DETECTOR,
    "scalar": PIXEL_DETECTOR.replace('scores = "confidence" }', 'scores = "confidence", count = "faces_found" }'),
}


@pytest.fixture(scope="module", params=PIXEL_COUNTS)
def pixel_app(request, tmp_path_factory, user_models, byom_app) -> Iterator[Flask]:
    """A gateway whose detect stage is pixel_faces, on byom_app's backend kind: in-process over its own servables,
    or through byom_app's double (which serves pixel_faces too)."""
    pipeline = _pipeline(PIPELINE, PIXEL_COUNTS[request.param])
    servables = ("pixel_faces", *PIPELINE_SERVABLES[1:])
    config = _serving_dir(tmp_path_factory.mktemp("byom-pixel"), user_models, pipeline, servables)
    settings, _ = gateway_settings("local", config)
    if byom_app.kind == "grpc":
        settings.update(backend="grpc", serving_target=byom_app.double.address)
    app = create_app(settings)
    serving(app).start()
    yield app
    serving(app).close()


def test_a_detector_with_pixel_xyxy_boxes_no_batch_and_a_scalar_or_no_count(pixel_app, byom_app):
    """BGR float input in 0..1, boxes [N, 4] in pixels as (xmin, ymin, xmax, ymax), a count that is a scalar
    or absent: the same face, the same box."""
    mine = pixel_app.test_client().post("/api/v1/detect", data=_photo()).json["faces"]
    reference = byom_app.test_client().post("/api/v1/detect", data=_photo()).json["faces"]
    assert len(mine) == len(reference) == 1
    for key in ("ymin", "xmin", "ymax", "xmax"):
        assert mine[0]["box"][key] == pytest.approx(reference[0]["box"][key], abs=0.01)
    search = pixel_app.test_client().post("/api/v1/search?k=1", data=_photo())
    assert search.json["matches"][0]["filename"] == "astronaut.jpg"


# -- misfits: refused at start and by check-models, each with its own message -----------------------

MISFITS = {
    "wrong dtype": (
        '[encode]\nservable = "int64_encoder"\ninputs = { image = "images" }\noutputs = { latent = "embedding" }',
        "image input 'images' is int64",
    ),
    "no image input": (
        '[detect]\nservable = "ssd_faces"\ninputs = { image = "image_tensor" }\n'
        'outputs = { boxes = "detection_boxes", scores = "detection_scores" }',
        "[detect.inputs] image = 'image_tensor' is not one of the signature's inputs; set image = 'inputs'",
    ),
    "missing output": (
        '[detect]\nservable = "ssd_faces"\ninputs = { image = "inputs" }\n'
        'outputs = { boxes = "detection_box", scores = "detection_scores" }',
        "boxes = 'detection_box' is not one of the signature's outputs; set boxes = 'detection_boxes'",
    ),
    "latent mismatch": (
        '[encode]\nservable = "small_latent_encoder"\ninputs = { image = "images" }\n'
        'outputs = { latent = "embedding" }',
        "the encoder's latent 'embedding' is [1,3] (3 values a face) but the search input 'target_latent' is "
        "[1,4,4,256]",
    ),
    "string where float expected": (
        '[search]\nservable = "string_search"',
        "distances = 'xvals' is string [?], where float is expected",
    ),
    "an input no role feeds": (
        '[search]\nservable = "thresholded_search"',
        "the signature also needs input 'max_distance' (float32 []), which no role feeds",
    ),
    "grey image input": (
        '[encode]\nservable = "grey_encoder"\ninputs = { image = "images" }\noutputs = { latent = "embedding" }',
        "image input 'images' is [1,64,64], not [batch, height, width, 3]",
    ),
    "no fixed size": (
        '[encode]\nservable = "any_size_encoder"\ninputs = { image = "images" }\noutputs = { latent = "embedding" }',
        "its height and width are not fixed; set size = [height, width]",
    ),
    "size against the model's": (
        '[encode]\nservable = "tf1_encoder"\ninputs = { image = "images" }\noutputs = { latent = "embedding" }\n'
        "image = { range = [-1, 1], size = [32, 32] }",
        "[encode.image] size = [32, 32] but the servable's input is 64x64; set size = [64, 64] or remove it",
    ),
    "k that is not an integer": (
        '[search]\nservable = "tutorial_search"\ninputs = { latent = "target_latent", k = "target_latent" }',
        "the signature also needs input 'k_num' (int32 []), which no role feeds",
    ),
    "no such signature": (
        '[translate]\nservable = "anime_generator"\ninputs = { image = "real_A" }\noutputs = { image = "fake_B" }',
        "signature = 'serving_default' is not one of the servable's; set signature = 'translate'",
    ),
    "no such servable": (
        '[translate]\nservable = "anime_gan"',
        "servable = 'anime_gan' is not served",
    ),
    "an image output that is not an image": (
        '[translate]\nservable = "vector_generator"\ninputs = { image = "real_A" }\noutputs = { image = "fake_B" }',
        "image = 'fake_B' is float32 [1,3], not an RGB image",
    ),
    "aligned crop without landmarks": (
        '[encode]\nservable = "tf1_encoder"\ninputs = { image = "images" }\noutputs = { latent = "embedding" }\n'
        'image = { range = [-1, 1] }\ncrop = "aligned"',
        'crop = "aligned" needs face landmarks, and [detect.outputs] maps no keypoints',
    ),
    "a size signature the model lacks": (
        '[search]\nservable = "tutorial_search"\nsignatures = { size = "gallery_size" }',
        "[search.signatures] size = 'gallery_size' is not one of the servable's signatures",
    ),
}


@pytest.fixture(scope="module")
def misfit_root(tmp_path_factory, user_models) -> Path:
    """One copy of the users' servables for every misfit case (each writes only its own pipeline file); all but
    pixel_faces, which no case wires."""
    root = tmp_path_factory.mktemp("byom-misfits")
    shutil.copytree(user_models, root / "serving_models")
    config = root / "serving_models.config"
    config.write_text(_config_text(name for name in SERVABLES if name != "pixel_faces"), encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def misfit_server(misfit_root) -> Iterator[dict]:
    """Settings of a gateway over the users' servables through one double for every case: the servables load once,
    so only the first case pays a model's first run in a fresh session (seconds, for a detector)."""
    with TFServingDouble(misfit_root, poll_interval=0) as double:
        yield {
            "model_config": misfit_root,
            "backend": "grpc",
            "serving_target": double.address,
            "timeout": CALL_TIMEOUT,
        }


@pytest.fixture(scope="module")
def misfit_runtime(misfit_root) -> Iterator[LocalBackend]:
    """The users' servables in-process, loaded once for every case (a gateway start would load them again)."""
    with LocalBackend(misfit_root, poll_interval=0, warmup=False) as backend:
        yield backend


def test_the_misfits_each_have_their_own_message():
    assert len(MISFITS) >= 10
    assert len({words for _, words in MISFITS.values()}) == len(MISFITS)


def _misfit_pipeline(case: str, folder: Path) -> Path:
    pipeline_file = folder / "pipeline.toml"
    pipeline_file.write_text(_pipeline(PIPELINE, MISFITS[case][0]), encoding="utf-8")
    return pipeline_file


def _refused_at_start(settings: dict, pipeline_file: Path) -> PipelineMisfit:
    app = create_app({**settings, "pipeline_config": pipeline_file})
    try:
        with pytest.raises(PipelineMisfit) as refused:
            serving(app).start()
    finally:
        serving(app).close()
    return refused.value


# Every case through a gateway start over the one double; in-process, every case through the check a start runs
# (check_pipeline, over one runtime) and one case through a whole start.
@pytest.mark.parametrize("case", MISFITS)
def test_a_misfit_stops_the_gateway_at_start(case, misfit_server, tmp_path):
    pipeline_file = _misfit_pipeline(case, tmp_path)
    message = _refused_at_start(misfit_server, pipeline_file).message
    assert MISFITS[case][1] in message
    assert str(pipeline_file) in message


def test_a_misfit_stops_the_in_process_gateway_at_start(misfit_root, tmp_path):
    pipeline_file = _misfit_pipeline("missing output", tmp_path)
    settings = {"model_config": misfit_root, "poll_interval": 0, "warmup": False}
    message = _refused_at_start(settings, pipeline_file).message
    assert MISFITS["missing output"][1] in message
    assert str(pipeline_file) in message


@pytest.mark.parametrize("case", MISFITS)
def test_the_in_process_runtime_shows_every_misfit(case, misfit_runtime, tmp_path):
    config = load_pipeline_config(_misfit_pipeline(case, tmp_path))
    misfits = misfits_of(check_pipeline(misfit_runtime, config))
    assert MISFITS[case][1] in PipelineMisfit(config.source, misfits).message


def _check_models(settings: dict, tmp_path: Path, case: str, *args: str):
    """check-models with ``args`` over the users' servables wired by the pipeline file of misfit ``case``."""
    app = create_app({"poll_interval": 0, **settings, "pipeline_config": _misfit_pipeline(case, tmp_path)})
    try:
        return app.test_cli_runner().invoke(args=["check-models", *args])
    finally:
        serving(app).close()


# Every case through the one double (the check reads metadata and sends a request per stage, whatever the backend);
# the in-process backend's check-models runs in the JSON test below and in test_check_models_says_every_stage_fits.
@pytest.mark.parametrize("case", MISFITS)
def test_check_models_names_the_misfit_and_the_change(case, misfit_server, tmp_path):
    result = _check_models(misfit_server, tmp_path, case)
    assert result.exit_code == 1, result.output
    assert "DOES NOT FIT" in result.output
    flat = " ".join(line.strip() for line in result.output.splitlines())
    problem, _, fix = MISFITS[case][1].partition("; ")
    assert re.sub(r"^\[[^\]]+\] ", "", problem) in flat
    if fix:
        assert f"change: {fix}" in flat


def test_check_models_json_says_a_misfit_does_not_fit(misfit_root, tmp_path):
    result = _check_models({"model_config": misfit_root}, tmp_path, "missing output", "--json", "--no-request")
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["fits"] is False


def test_gunicorn_stops_on_a_misfit_with_the_reason(misfit_root, tmp_path):
    pipeline_file = tmp_path / "pipeline.toml"
    pipeline_file.write_text(_pipeline(PIPELINE, MISFITS["missing output"][0]), encoding="utf-8")
    env = {
        "GATEWAY_MODEL_CONFIG": str(misfit_root),
        "GATEWAY_PIPELINE_CONFIG": str(pipeline_file),
        "GATEWAY_WARMUP": "0",
        "GATEWAY_BIND": "127.0.0.1:0",
        "GATEWAY_WORKERS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"],
        cwd=REPO,
        env={**_environ(), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    log = result.stdout + result.stderr
    assert "boxes = 'detection_box' is not one of the signature's outputs" in log
    assert "Worker failed to boot" in log


def _environ() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}


def test_a_bad_pipeline_file_stops_the_app_naming_file_key_and_fix(tmp_path):
    pipeline_file = tmp_path / "pipeline.toml"
    pipeline_file.write_text('[encode]\nservable = "tf1_encoder"\ncrop = "centre"\n', encoding="utf-8")
    with pytest.raises(ValueError) as refused:
        create_app({"pipeline_config": pipeline_file})
    assert str(refused.value) == (f"{pipeline_file}: [encode]: crop: input should be 'box' or 'aligned', got 'centre'")


def test_the_same_servable_answers_the_same_through_both_backends(user_models, tmp_path):
    """Identical answers, message included, from the runtime and through the double."""
    answers = []
    for kind in ("local", "grpc"):
        config = _serving_dir(tmp_path / kind, user_models, PIPELINE)
        settings, double = gateway_settings(kind, config)
        app = create_app(settings)
        try:
            client = app.test_client()
            search = client.post("/api/v1/search?k=5", data=_photo()).json
            too_many = client.post("/api/v1/search?k=14", data=_photo()).json
            answers.append(([(m["filename"], round(m["distance"], 5)) for m in search["matches"]], too_many))
        finally:
            serving(app).close()
            if double is not None:
                double.close()
    assert answers[0] == answers[1]


def test_photo_pipeline_runs_on_the_users_servables_without_flask(user_models, tmp_path):
    config = _serving_dir(tmp_path, user_models, PIPELINE)
    with LocalBackend(config, poll_interval=0, warmup=False) as backend:
        pipeline = Pipeline(backend, load_pipeline_config(tmp_path / "pipeline.toml"))
        result = pipeline.run(ASTRONAUT, k=4)
    assert isinstance(result.photo, Photo)
    assert result.matches[0].filename == "astronaut.jpg"
    assert result.anime.shape == (conformance.GENERATOR_SIDE, conformance.GENERATOR_SIDE, 3)
