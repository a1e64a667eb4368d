"""The TF.js weights-manifest reader: groups and shards, dtypes, quantization, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.modelzoo.tfjs_weights import WeightsManifestError, decode_groups, read_weights


def _write(folder: Path, groups: list[dict], shards: dict[str, bytes], name: str = "m-weights_manifest.json") -> Path:
    for shard_name, data in shards.items():
        (folder / shard_name).write_bytes(data)
    path = folder / name
    path.write_text(json.dumps(groups), encoding="utf-8")
    return path


def test_float32_int32_and_bool_weights_across_two_shards_and_two_groups(tmp_path):
    kernel = np.arange(12, dtype="<f4").reshape(2, 3, 2)
    steps = np.array([-3, 7], dtype="<i4")
    flags = np.array([1, 0, 1], dtype=np.uint8)
    first = kernel.tobytes() + steps.tobytes()
    groups = [
        {
            "paths": ["g1-shard1of2.bin", "g1-shard2of2.bin"],
            "weights": [
                {"name": "dense/kernel", "shape": [2, 3, 2], "dtype": "float32"},
                {"name": "steps", "shape": [2], "dtype": "int32"},
            ],
        },
        {"paths": ["g2.bin"], "weights": [{"name": "flags", "shape": [3], "dtype": "bool"}]},
    ]
    # The first group's bytes split mid-tensor across its two shards: shards are joined before decoding.
    path = _write(tmp_path, groups, {"g1-shard1of2.bin": first[:30], "g1-shard2of2.bin": first[30:], "g2.bin": flags})
    arrays = read_weights(path)
    np.testing.assert_array_equal(arrays["dense/kernel"], kernel)
    assert arrays["dense/kernel"].dtype == np.float32
    np.testing.assert_array_equal(arrays["steps"], steps)
    np.testing.assert_array_equal(arrays["flags"], [True, False, True])


@pytest.mark.parametrize(("kind", "numpy_kind"), [("uint8", "u1"), ("uint16", "<u2")])
def test_affine_quantization_is_min_plus_q_times_scale(kind, numpy_kind):
    q = np.array([0, 1, 2, 255], dtype=numpy_kind)
    entry = {
        "name": "w",
        "shape": [2, 2],
        "dtype": "float32",
        "quantization": {"dtype": kind, "scale": 0.5, "min": -1.25},
    }
    arrays = decode_groups([{"paths": [], "weights": [entry]}], [q.tobytes()])
    np.testing.assert_allclose(arrays["w"], [[-1.25, -0.75], [-0.25, 126.25]])
    assert arrays["w"].dtype == np.float32


def test_float16_quantization_and_rounded_int32():
    halves = np.array([0.5, -2.0, 65504.0], dtype="<f2")
    q = np.array([3, 4], dtype=np.uint8)
    groups = [
        {
            "weights": [
                {"name": "h", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
                {
                    "name": "i",
                    "shape": [2],
                    "dtype": "int32",
                    "quantization": {"dtype": "uint8", "scale": 0.5, "min": 0},
                },
            ]
        }
    ]
    arrays = decode_groups(groups, [halves.tobytes() + q.tobytes()])
    np.testing.assert_array_equal(arrays["h"], [0.5, -2.0, 65504.0])
    assert arrays["i"].dtype == np.int32
    np.testing.assert_array_equal(arrays["i"], [2, 2])  # 1.5 and 2.0 rounded half to even, as numpy rounds


def test_model_json_form_is_read(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.float32(2.5).tobytes())
    document = {"format": "graph-model", "weightsManifest": [{"paths": ["w.bin"], "weights": [
        {"name": "x", "shape": [], "dtype": "float32"}]}]}  # fmt: skip
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    assert float(read_weights(path)["x"]) == 2.5


@pytest.mark.parametrize(
    ("groups", "data", "message"),
    [
        ([{"weights": [{"name": "w", "shape": [4], "dtype": "float32"}]}], b"\0" * 8, "shards end at 8"),
        ([{"weights": [{"name": "w", "shape": [1], "dtype": "float32"}]}], b"\0" * 8, "take 4 bytes but"),
        ([{"weights": [{"name": "s", "shape": [1], "dtype": "string"}]}], b"", "dtype 'string'"),
        (
            [{"weights": [{"name": "w", "shape": [1], "dtype": "float32", "quantization": {"dtype": "int4"}}]}],
            b"\0",
            "quantized as 'int4'",
        ),
        (
            [{"weights": [{"name": "w", "shape": [1], "dtype": "float32", "quantization": {"dtype": "uint8"}}]}],
            b"\0",
            "without a numeric scale and min",
        ),
        (
            [
                {
                    "weights": [
                        {"name": "w", "shape": [1], "dtype": "float32"},
                        {"name": "w", "shape": [1], "dtype": "float32"},
                    ]
                }
            ],
            b"\0" * 8,
            "appears twice",
        ),
        ([{"weights": [{"shape": [1], "dtype": "float32"}]}], b"\0" * 4, "needs a name"),
    ],
)
def test_bad_layouts_name_the_weight(groups, data, message):
    with pytest.raises(WeightsManifestError, match=message):
        decode_groups(groups, [data])


def test_shard_outside_the_manifest_folder_is_refused(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4)
    path = _write(folder, [{"paths": ["../secret.bin"], "weights": []}], {})
    with pytest.raises(WeightsManifestError, match="leaves the manifest's folder"):
        read_weights(path)


def test_missing_shard_and_bad_json_are_clear(tmp_path):
    path = _write(tmp_path, [{"paths": ["absent.bin"], "weights": []}], {})
    with pytest.raises(WeightsManifestError, match=r"cannot read shard 'absent\.bin'"):
        read_weights(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(WeightsManifestError, match="not a readable JSON"):
        read_weights(path)
    path.write_text('{"format": "layers-model"}', encoding="utf-8")
    with pytest.raises(WeightsManifestError, match="expected a list of weight groups"):
        read_weights(path)
