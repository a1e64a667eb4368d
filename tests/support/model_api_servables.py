"""Servables for the model surfaces' tests: TF Serving's own half_plus_two, a classifier with labels, string and
mixed-dtype models.

``export_half_plus_two`` rebuilds the model http_rest_api_handler_test.cc runs its cases against,
saved_model_half_plus_two_2_versions version 123 (tensorflow_serving/servables/tensorflow/testdata, made by
saved_model_half_plus_two.py): its TF1 graph and its six signatures, without the asset file. It is served
under that name with the label ``Version_Label``, as the handler test serves it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow as tf
from flask import Flask

from app import create_app
from tests.support.double import TFServingDouble
from tests.support.gateway import BACKEND_KINDS
from tests.support.once import built_once

HALF_PLUS_TWO = "saved_model_half_plus_two_2_versions"
HALF_PLUS_TWO_VERSION = 123
HALF_PLUS_TWO_LABEL = "Version_Label"
CLASSES = ("low", "high")


def _staged(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    return staging


def export_half_plus_two(path: Path) -> Path:
    """y = 0.5x + 2 (and y2 = 0.5x + 3, y3 = 0.5x2 + 3) over tf.Examples with float features x and x2."""
    staging = _staged(path)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        a = tf.compat.v1.Variable(0.5, name="a")
        b = tf.compat.v1.Variable(2.0, name="b")
        c = tf.compat.v1.Variable(3.0, name="c")
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example")  # unknown rank, as in TF Serving's export
        parsed = tf.io.parse_example(
            serialized,
            {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            },
        )
        for column in parsed.values():
            column.set_shape([None, 1])  # what parse_example made of an unknown-rank input when TF Serving exported it
        x = tf.identity(parsed["x"], name="x")  # fed directly by Predict: any shape goes
        y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2 = tf.compat.v1.Variable(0.5, name="a2")
        c2 = tf.compat.v1.Variable(3.0, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")
        utils = tf.compat.v1.saved_model
        signatures = {
            "regress_x_to_y": utils.regression_signature_def(serialized, y),
            "regress_x_to_y2": utils.regression_signature_def(serialized, y2),
            "regress_x2_to_y3": utils.build_signature_def(  # a float input: built by hand, as TF Serving's script does
                {"inputs": utils.build_tensor_info(x2)},
                {"outputs": utils.build_tensor_info(y3)},
                "tensorflow/serving/regress",
            ),
            "classify_x_to_y": utils.build_signature_def(
                {"inputs": utils.build_tensor_info(serialized)},
                {"scores": utils.build_tensor_info(y)},
                "tensorflow/serving/classify",
            ),
            "classify_x2_to_y3": utils.build_signature_def(
                {"inputs": utils.build_tensor_info(x2)},
                {"scores": utils.build_tensor_info(y3)},
                "tensorflow/serving/classify",
            ),
            "serving_default": utils.predict_signature_def({"x": x}, {"y": y}),
        }
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(staging))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    staging.rename(path)
    return path


def export_classifier(path: Path) -> Path:
    """A classifier with labels: feature "x" in, classes ("low", "high") and scores (1 - p, p), p = sigmoid(x)."""
    staging = _staged(path)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        serialized = tf.compat.v1.placeholder(tf.string, name="tf_example", shape=[None])
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]
        p = tf.sigmoid(x)
        scores = tf.concat([1.0 - p, p], axis=1, name="scores")
        classes = tf.tile(tf.constant([list(CLASSES)]), [tf.shape(x)[0], 1], name="classes")
        signature = tf.compat.v1.saved_model.classification_signature_def(serialized, classes, scores)
        builder = tf.compat.v1.saved_model.Builder(str(staging))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    staging.rename(path)
    return path


class Texts(tf.Module):
    """Strings in; the same bytes out under a name ending in _bytes, their upper case and length beside."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"echo_bytes": tf.identity(text), "upper": tf.strings.upper(text), "length": tf.strings.length(text)}


class Kinds(tf.Module):
    """One identity signature per dtype the JSON mapping knows (and one it does not: half)."""


_KINDS = {
    "int8": tf.int8,
    "uint8": tf.uint8,
    "int16": tf.int16,
    "int32": tf.int32,
    "int64": tf.int64,
    "uint32": tf.uint32,
    "uint64": tf.uint64,
    "float": tf.float32,
    "double": tf.float64,
    "bool": tf.bool,
    "string": tf.string,
    "half": tf.float16,
    "uint16": tf.uint16,
}


def _identity(dtype: tf.DType):
    @tf.function(input_signature=[tf.TensorSpec(None, dtype, name="x")])
    def serve(x):
        return {"y": tf.identity(x)}

    return serve


def export_texts(path: Path) -> Path:
    staging = _staged(path)
    module = Texts()
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    staging.rename(path)
    return path


def export_kinds(path: Path) -> Path:
    staging = _staged(path)
    module = Kinds()
    functions = {name: _identity(dtype) for name, dtype in _KINDS.items()}
    for name, function in functions.items():
        setattr(module, f"serve_{name}", function)
    signatures = {name: getattr(module, f"serve_{name}") for name in functions}
    signatures["serving_default"] = signatures["float"]
    tf.saved_model.save(module, str(staging), signatures=signatures)
    staging.rename(path)
    return path


def export_all(root: Path) -> Path:
    export_half_plus_two(root / "half_plus_two" / f"{HALF_PLUS_TWO_VERSION:08d}")
    export_classifier(root / "classifier" / "1")
    export_texts(root / "texts" / "1")
    export_kinds(root / "kinds" / "1")
    return root


CONFIG = f"""
model_config_list {{
  config {{
    name: "{HALF_PLUS_TWO}"
    base_path: "/models/half_plus_two"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: {HALF_PLUS_TWO_VERSION} }} }}
    version_labels {{ key: "{HALF_PLUS_TWO_LABEL}" value: {HALF_PLUS_TWO_VERSION} }}
  }}
  config {{
    name: "classifier"
    base_path: "/models/classifier"
    model_platform: "tensorflow"
  }}
  config {{
    name: "texts"
    base_path: "/models/texts"
    model_platform: "tensorflow"
  }}
  config {{
    name: "kinds"
    base_path: "/models/kinds"
    model_platform: "tensorflow"
  }}
}}
"""


# -- fixtures: the gateway over these servables, on each backend (import them into a test module) -----------------


@pytest.fixture(scope="session")
def model_api_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "model-api", lambda folder: export_all(folder / "serving_models")) / (
        "serving_models"
    )


def serving_dir(root: Path, exported: Path) -> Path:
    shutil.copytree(exported, root / "serving_models")
    config = root / "serving_models.config"
    config.write_text(CONFIG, encoding="utf-8")
    return config


def surface_app_of(kind: str, config: Path, **settings) -> tuple[Flask, TFServingDouble | None]:
    """The gateway over ``config`` on the local backend, or via gRPC to a protocol double (returned beside it)."""
    options = {"poll_interval": 0, "model_config": config, "rate_limit": "", "warmup": False} | settings
    double = None
    if kind == "grpc":
        # As compose runs TF Serving: a label may name a version that is still loading at start.
        double = TFServingDouble(config, poll_interval=0, allow_labels_for_unavailable=True, warmup=False).start()
        options.update(backend="grpc", serving_target=double.address)
    app = create_app(options)
    app.config["TESTING"] = True
    app.double = double  # type: ignore[attr-defined]
    return app, double


def close_surface_app(app: Flask, double: TFServingDouble | None) -> None:
    app.extensions["serving"].close()
    if double is not None:
        double.close()


@pytest.fixture(scope="module", params=BACKEND_KINDS)
def surface_app(request: pytest.FixtureRequest, tmp_path_factory, model_api_models: Path) -> Iterator[Flask]:
    config = serving_dir(tmp_path_factory.mktemp("surface-app"), model_api_models)
    app, double = surface_app_of(request.param, config)
    yield app
    close_surface_app(app, double)
