"""Small SavedModels the serving tests export for themselves: numeric, string, asset-backed lookup, identity."""

from __future__ import annotations

import shutil
from pathlib import Path

import tensorflow as tf

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
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
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
