"""Small SavedModels the serving tests export for themselves: numeric, string, asset-backed lookup, identity, TF1.

``CONFIG`` labels nothing: TF Serving refuses a label on a version that is not AVAILABLE yet, and
at start nothing is (``--allow_version_labels_for_unavailable_models`` aside). Tests that need
half_plus's labels give them the way the real server takes them, with ``give_labels``: a second
edit of the file, applied once both versions serve.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

if TYPE_CHECKING:
    from app.serving.runtime import ModelRuntime

VOCABULARY = ("face", "latent", "gallery", "anime", "servable")


class HalfPlus(tf.Module):
    """y = 0.5 * x + offset; the offset tells versions apart. A second signature doubles x."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = tf.constant(offset, tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": 0.5 * x + self.offset}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def times_two(self, x):
        return {"y": 2.0 * x}


class Words(tf.Module):
    """Strings in, strings and int32 out."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}


class Vocabulary(tf.Module):
    """Looks words up in a vocabulary file shipped as a SavedModel asset; unknown words give -1."""

    def __init__(self, vocab_file: Path) -> None:
        super().__init__()
        initializer = tf.lookup.TextFileInitializer(
            str(vocab_file),
            key_dtype=tf.string,
            key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            value_dtype=tf.int64,
            value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.table = tf.lookup.StaticHashTable(initializer, default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="word")])
    def serve(self, word):
        return {"index": self.table.lookup(word)}


class Identity(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.identity(x)}


class Adder(tf.Module):
    """Two inputs: the alias checks have something to tell apart, and mismatched shapes fail in the graph."""

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.float32, name="a"), tf.TensorSpec([None], tf.float32, name="b")]
    )
    def serve(self, a, b):
        return {"sum": a + b, "difference": a - b}


def _save(module: tf.Module, path: Path, **extra_signatures) -> Path:
    """Save to a temporary sibling and rename into place, as a model writer must for a polling server."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    signatures = {"serving_default": module.serve, **extra_signatures}
    tf.saved_model.save(module, str(staging), signatures=signatures)
    staging.rename(path)
    return path


def export_half_plus(path: Path, offset: float) -> Path:
    module = HalfPlus(offset)
    return _save(module, path, times_two=module.times_two)


def export_words(path: Path) -> Path:
    return _save(Words(), path)


def export_vocabulary(path: Path, scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    vocab_file = scratch / "vocab.txt"
    vocab_file.write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    return _save(Vocabulary(vocab_file), path)


def export_identity(path: Path) -> Path:
    return _save(Identity(), path)


def export_adder(path: Path) -> Path:
    return _save(Adder(), path)


def export_half_plus_two_tf1(path: Path) -> Path:
    """A TF1 SavedModelBuilder export like TF Serving's own testdata (saved_model_half_plus_two): y = 0.5x + 2 as
    Predict ("serving_default", x -> y), Regress ("regress_x_to_y") and Classify ("classify_x_to_y") over tf.Examples
    with a float feature "x"."""
    graph = tf.Graph()
    with graph.as_default():
        examples = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        parsed = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([1], tf.float32)})
        y_of_examples = tf.add(0.5 * parsed["x"], 2.0, name="y_of_examples")  # [batch, 1]
        classes = tf.fill(tf.shape(y_of_examples), "half_plus_two", name="classes")
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        y = tf.add(0.5 * x, 2.0, name="y")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".{path.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(staging))
            signatures = {
                "serving_default": tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": y}),
                "regress_x_to_y": tf.compat.v1.saved_model.regression_signature_def(examples, y_of_examples),
                "classify_x_to_y": tf.compat.v1.saved_model.classification_signature_def(
                    examples, classes, y_of_examples
                ),
            }
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    staging.rename(path)
    return path


def write_warmup(version_dir: Path, records: Iterable[prediction_log_pb2.PredictionLog | bytes]) -> Path:
    """Write warmup records (PredictionLogs, or raw bytes for broken ones) where TF Serving looks for them."""
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())
    return path


def export_all(root: Path) -> Path:
    """Write every test servable under root/<name>/<version>/ and return root."""
    export_half_plus(root / "half_plus" / "1", offset=2.0)
    export_half_plus(root / "half_plus" / "2", offset=3.0)
    export_words(root / "words" / "1")
    export_vocabulary(root / "vocabulary" / "1", root.parent / "vocab-src")
    export_identity(root / "identity" / "1")
    return root


CONFIG = """
# Test servables; base paths use the container prefix, mapped to ./serving_models.
model_config_list {
  config {
    name: "half_plus"
    base_path: "/models/half_plus"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
  config {
    name: "half_plus_latest"
    base_path: "/models/half_plus"
    model_platform: "tensorflow"
  }
  config {
    name: "half_plus_specific"
    base_path: "/models/half_plus"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 } }
  }
  config {
    name: "words"
    base_path: "/models/words"
    model_platform: "tensorflow"
  }
  config {
    name: "vocabulary"
    base_path: "/models/vocabulary"
    model_platform: "tensorflow"
  }
  config {
    name: "identity"
    base_path: "/models/identity"
    model_platform: "tensorflow"
  }
}
"""

LABELS = {"stable": 1, "canary": 2}  # half_plus's version labels, once both versions serve


def labelled_config(labels: Mapping[str, int] = LABELS, config: str = CONFIG) -> str:
    """``config`` with half_plus's version labels."""
    entries = "".join(
        f'    version_labels {{ key: "{label}" value: {version} }}\n' for label, version in labels.items()
    )
    anchor = "    model_version_policy { all {} }\n"
    assert config.count(anchor) == 1
    return config.replace(anchor, anchor + entries)


def give_labels(runtime: ModelRuntime, labels: Mapping[str, int] = LABELS) -> None:
    """Label half_plus's versions as TF Serving lets one: write the labels into the file, reload once they serve."""
    runtime.config_path.write_text(labelled_config(labels), encoding="utf-8")
    runtime.reload_config()
