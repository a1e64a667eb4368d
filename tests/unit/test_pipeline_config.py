"""The pipeline file: defaults, every problem named by file, key and fix, the shipped file, and its documentation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from app.errors import model_sentence
from app.pipeline_check import fit_latent, latent_size
from app.pipeline_config import (
    DEFAULT_PIPELINE,
    PipelineConfig,
    PipelineConfigError,
    load_pipeline_config,
    parse_pipeline_config,
)
from app.serving.base import TensorSpec

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_demo_servables():
    assert DEFAULT_PIPELINE.servables == (
        "face_detection",
        "twingan_latent_encoder",
        "latent_search_model",
        "ugatit_selfie2anime",
    )
    assert DEFAULT_PIPELINE["detect"].inputs["image"] == "input_images"
    assert DEFAULT_PIPELINE.search.signatures.get("size") is None  # optional: most search models have none
    assert DEFAULT_PIPELINE.translate.image.range == (-1.0, 1.0)
    assert list(DEFAULT_PIPELINE) == ["detect", "encode", "search", "translate"]


def test_a_missing_file_gives_the_defaults_unless_it_was_named(tmp_path):
    config = load_pipeline_config(tmp_path / "pipeline.toml")
    assert config.servables == DEFAULT_PIPELINE.servables
    assert "built-in defaults" in config.source
    with pytest.raises(PipelineConfigError, match="no such file"):
        load_pipeline_config(tmp_path / "pipeline.toml", required=True)


def test_the_shipped_file_is_valid_and_wires_the_demo():
    shipped = load_pipeline_config(REPO / "pipeline.toml", required=True)
    assert shipped.servables == DEFAULT_PIPELINE.servables
    assert shipped.search.signatures.get("size") == "gallery_size"
    assert shipped.detect.outputs.get("keypoints") == "keypoints"


def test_a_partial_file_keeps_the_other_defaults():
    config = parse_pipeline_config('[translate]\nservable = "my_gan"\nimage = { range = [0, 1], channels = "BGR" }\n')
    assert config.translate.servable == "my_gan"
    assert config.translate.image.range == (0.0, 1.0)
    assert config.translate.image.channels == "BGR"
    assert config.translate.inputs["image"] == "input_images"
    assert config.detect == DEFAULT_PIPELINE.detect


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[detct]\n",
            "[detct]: is not a stage; the stages are detect, encode, search, translate (did you mean 'detect'?)",
        ),
        ('[detect]\nservable = "a b"\n', "[detect]: servable: string should match pattern"),
        ("[detect]\nthreshold = 2\n", "[detect]: threshold: input should be less than or equal to 1, got 2"),
        ('[detect]\nboxes = { order = "xy" }\n', "[detect.boxes]: order: input should be 'yxyx' or 'xyxy', got 'xy'"),
        (
            '[detect]\noutputs = { boxs = "b" }\n',
            "[detect.outputs]: unknown key 'boxs'; the keys here are boxes, scores, count, keypoints "
            "(did you mean 'boxes'?)",
        ),
        ("[encode]\nfoo = 1\n", "[encode]: unknown key 'foo'; the keys here are servable, signature, inputs"),
        ('[encode]\ncrop = "centre"\n', "[encode]: crop: input should be 'box' or 'aligned', got 'centre'"),
        ("[translate]\nimage = { range = [1, -1] }\n", "[translate.image]: range must be [low, high] with low < high"),
        ('[search]\ninputs = { latent = "" }\n', "[search.inputs]: latent: string should have at least 1 character"),
        ("[search]\nsignatures = { size = 3 }\n", "[search.signatures]: size: input should be a valid string, got 3"),
        ("x = \n", "is not valid TOML"),
    ],
)
def test_every_problem_names_the_file_the_key_and_the_fix(text, message):
    with pytest.raises(PipelineConfigError) as refused:
        parse_pipeline_config(text, source="/srv/pipeline.toml")
    assert str(refused.value).startswith("/srv/pipeline.toml: ")
    assert message in str(refused.value)


def test_not_utf8():
    with pytest.raises(PipelineConfigError, match="is not UTF-8"):
        parse_pipeline_config(b"[detect]\nservable = '\xff'\n")


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if name == "source":
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_every_key_is_documented():
    """docs/bring-your-own-models.md names every key of every stage, so the reference cannot fall behind."""
    guide = (REPO / "docs" / "bring-your-own-models.md").read_text(encoding="utf-8")
    missing = []
    for stage, field in PipelineConfig.model_fields.items():
        if stage == "source":
            continue
        section = guide.split(f"### `[{stage}]`", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
        for key in _keys(field.annotation):
            head = key.split(".")[0]
            common = head in ("servable", "signature", "image")
            if f"`{key}`" not in section and not (common or re.search(rf"`{re.escape(head)}`", section)):
                missing.append(f"{stage}.{key}")
    assert not missing


@pytest.mark.parametrize(
    ("shape", "size", "sent"),
    [
        ((None, 4096), 4096, (1, 4096)),
        ((1, 4, 4, 256), 4096, (1, 4, 4, 256)),
        ((4, 4, 256), 4096, (4, 4, 256)),
        ((4096,), 4096, (4096,)),
        ((None,), 128, (128,)),
        ((None, None), 128, None),
        (None, 128, (1, 128)),
        ((1, 128), 4096, None),
        ((None, 3), 128, None),
    ],
)
def test_a_latent_is_shaped_to_what_the_search_input_takes(shape, size, sent):
    spec = TensorSpec("target_latent", np.dtype(np.float32), shape)
    latent = np.arange(size, dtype=np.float32)
    if sent is None and shape == (None, None):
        assert fit_latent(latent, spec).shape == (1, size)  # a leading batch of one, then the rest
        return
    if sent is None:
        with pytest.raises(ValueError, match=f"a latent of {size} values does not fit"):
            fit_latent(latent, spec)
        return
    fitted = fit_latent(latent, spec)
    assert fitted.shape == sent
    assert np.array_equal(fitted.reshape(-1), latent)


def test_latent_size_counts_the_values_of_one_face():
    assert latent_size((None, 4, 4, 256)) == 4096
    assert latent_size((1, 128)) == 128
    assert latent_size((128,)) == 128
    assert latent_size((None, None)) is None
    assert latent_size(None) is None


@pytest.mark.parametrize(
    ("message", "sentence"),
    [
        (
            "Graph execution error:\n\nDetected at node 'TopKV2' defined at (most recent call last):\n"
            "<stack traces unavailable>\nNode: 'TopKV2'\ninput must have at least k columns. Had 3, needed 5\n"
            "\t [[{{node TopKV2}}]]",
            "input must have at least k columns. Had 3, needed 5",
        ),
        (
            "input must have at least k columns. Had 50, needed 60\n\t [[{{node TopKV2}}]]",
            "input must have at least k columns. Had 50, needed 60",
        ),
        (
            "assertion failed: [k_num must be at most the gallery size] [Condition x <= y did not hold] "
            "[x (k_num:0) = ] [60]\n\t [[{{node Assert}}]]",
            "k_num must be at most the gallery size Condition x <= y did not hold x (k_num:0) = 60",
        ),
        (
            "2 root error(s) found.\n  (0) INVALID_ARGUMENT: bad thing\n\t [[{{node X}}]]\n  (1) INVALID_ARGUMENT: "
            "bad thing\n0 successful operations.",
            "bad thing",
        ),
        ("Expects arg[0] to be float but int32 is provided", "Expects arg[0] to be float but int32 is provided"),
    ],
)
def test_model_errors_keep_tensorflows_sentence(message, sentence):
    assert model_sentence(message) == sentence
