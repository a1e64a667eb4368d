"""Servables exported the way users export them, for the conformance suite: TF1 graphs, frozen checkpoints,
asset-backed lookups, Object Detection API names, generators with their own names and ranges.

Nothing here is the gateway's own export code: each model is written the way its kind is
written in the wild, so the suite proves that such exports drop in with only a pipeline file.

- ``export_od_api_detector``: the TF Object Detection API's serving names (``inputs`` uint8 ->
  ``detection_boxes`` [1, 100, 4] normalised (ymin, xmin, ymax, xmax), ``detection_scores``,
  ``detection_classes``, ``num_detections`` float [1]); the boxes come from the demo detector.
- ``export_pixel_detector``: a detector with other conventions: float BGR input in 0..1, boxes in
  pixels as (xmin, ymin, xmax, ymax), ``[N, 4]`` with no batch dimension, and no count output.
- ``export_tf1_encoder``: a TF1 graph frozen from a checkpoint (``convert_variables_to_constants``),
  fixed batch 1, float input in [-1, 1], latent ``[1, 4, 4, 256]``.
- ``export_tutorial_search``: the original tutorial's search model: ``SavedModelBuilder``,
  placeholders, latents in a raw float32 asset file read with ``read_file`` + ``decode_raw`` into a
  local ResourceVariable (initialised by the main op), file names through
  ``index_to_string_table_from_file``, outputs ``[k]`` with no batch dimension, no warmup file and
  no gallery-size signature: a k beyond the gallery is the graph's own INVALID_ARGUMENT.
- ``export_generator``: a TF1 generator with its own tensor names and a [-1, 1] range.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import lookup_ops

from app.images import resize

v1 = tf.compat.v1
LATENT_SHAPE = (4, 4, 256)
ENCODER_SIDE = 64
GENERATOR_SIDE = 128
OD_API_DETECTIONS = 100


def _builder_save(path: Path, session: v1.Session, signatures: dict, **options) -> Path:
    """SavedModelBuilder into a staging folder renamed into place, as a publisher to a polling server must."""
    staging = path.parent / f".{path.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    builder = v1.saved_model.builder.SavedModelBuilder(str(staging))
    builder.add_meta_graph_and_variables(
        session, [v1.saved_model.tag_constants.SERVING], signature_def_map=signatures, **options
    )
    builder.save()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(path)
    return path


def _predict_signature(inputs: dict, outputs: dict):
    return v1.saved_model.signature_def_utils.predict_signature_def(inputs=inputs, outputs=outputs)


# -- detectors: wrappers of the demo detector with other names and conventions ----------------------


class _ODAPIDetector(tf.Module):
    def __init__(self, demo: Path) -> None:
        super().__init__()
        self.demo = tf.saved_model.load(str(demo))

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="inputs")])
    def serve(self, inputs):
        out = self.demo.signatures["serving_default"](input_images=inputs)
        boxes, scores = out["boxes"][0], out["scores"][0]
        count = tf.shape(scores)[0]
        pad = OD_API_DETECTIONS - count
        return {
            "detection_boxes": tf.pad(boxes, [[0, pad], [0, 0]])[tf.newaxis],
            "detection_scores": tf.pad(scores, [[0, pad]])[tf.newaxis],
            "detection_classes": tf.ones([1, OD_API_DETECTIONS], tf.float32),
            "num_detections": tf.cast(count, tf.float32)[tf.newaxis],
        }


class _PixelDetector(tf.Module):
    def __init__(self, demo: Path) -> None:
        super().__init__()
        self.demo = tf.saved_model.load(str(demo))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="image_bgr")])
    def serve(self, image_bgr):
        rgb = tf.cast(tf.round(tf.clip_by_value(image_bgr[..., ::-1], 0.0, 1.0) * 255.0), tf.uint8)
        out = self.demo.signatures["serving_default"](input_images=rgb)
        size = tf.cast(tf.shape(image_bgr)[1:3], tf.float32)
        count = tf.cast(tf.reshape(out["num_detections"], [-1])[0], tf.int32)
        ymin, xmin, ymax, xmax = tf.unstack(out["boxes"][0][:count], axis=1)
        height, width = size[0], size[1]
        return {
            "rects": tf.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1),
            "confidence": out["scores"][0][:count],
            "faces_found": count,  # a scalar, for pipelines that map a count
        }


def export_od_api_detector(path: Path, demo_detector: Path) -> Path:
    module = _ODAPIDetector(demo_detector)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def export_pixel_detector(path: Path, demo_detector: Path) -> Path:
    module = _PixelDetector(demo_detector)
    tf.saved_model.save(module, str(path), signatures={"detect": module.serve})
    return path


# -- a TF1 encoder frozen from a checkpoint ------------------------------------------------------------


def _encoder_graph(side: int = ENCODER_SIDE, *, dtype=tf.float32, input_shape=None):
    """A small conv net on a [1, side, side, 3] float image in [-1, 1]; latent [1, 4, 4, 256], L2-normalised."""
    images = v1.placeholder(dtype, input_shape or [1, side, side, 3], name="images")
    rng = np.random.default_rng(7)
    kernel = v1.get_variable("conv1/kernel", initializer=rng.normal(0, 0.2, (5, 5, 3, 64)).astype(np.float32))
    kernel2 = v1.get_variable("conv2/kernel", initializer=rng.normal(0, 0.05, (3, 3, 64, 256)).astype(np.float32))
    net = tf.nn.relu(tf.nn.conv2d(tf.cast(images, tf.float32), kernel, strides=2, padding="SAME"))
    net = tf.nn.conv2d(net, kernel2, strides=2, padding="SAME")
    pooled = tf.nn.avg_pool2d(net, ksize=side // 16, strides=side // 16, padding="VALID")  # [1, 4, 4, 256]
    flat = tf.reshape(pooled, [-1, int(np.prod(LATENT_SHAPE))])
    normalised = tf.reshape(tf.math.l2_normalize(flat, axis=1), [-1, *LATENT_SHAPE])
    return images, tf.identity(normalised, name="embedding")


def export_tf1_encoder(path: Path, scratch: Path) -> Path:
    """Train-time graph -> checkpoint -> frozen GraphDef -> SavedModelBuilder, as TF1 encoders were shipped."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        _encoder_graph()
        session.run(v1.global_variables_initializer())
        checkpoint = v1.train.Saver().save(session, str(scratch / "encoder.ckpt"))
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        _encoder_graph()
        v1.train.Saver().restore(session, checkpoint)
        frozen = v1.graph_util.convert_variables_to_constants(session, graph.as_graph_def(), ["embedding"])
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        tf.graph_util.import_graph_def(frozen, name="")
        images, latent = graph.get_tensor_by_name("images:0"), graph.get_tensor_by_name("embedding:0")
        return _builder_save(
            path, session, {"serving_default": _predict_signature({"images": images}, {"embedding": latent})}
        )


def encode_with_tf1_encoder(faces: Sequence[np.ndarray]) -> np.ndarray:
    """Latents of uint8 face crops [N, H, W, 3] by the same graph, as a user's indexing script computes them."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        images, latent = _encoder_graph(input_shape=[None, ENCODER_SIDE, ENCODER_SIDE, 3])
        session.run(v1.global_variables_initializer())
        batch = np.stack([resize(face, (ENCODER_SIDE, ENCODER_SIDE)) for face in faces]).astype(np.float32)
        return session.run(latent, {images: batch / 127.5 - 1.0})


# -- the tutorial's asset-backed search model ------------------------------------------------------


def export_tutorial_search(path: Path, latents: np.ndarray, filenames: Sequence[str], scratch: Path) -> Path:
    """Latents [N, 4, 4, 256] and their file names as a TF1 SavedModel the way the tutorial wrote it."""
    latents = np.asarray(latents, np.float32).reshape(len(filenames), -1)
    scratch.mkdir(parents=True, exist_ok=True)
    latents_file, names_file = scratch / "latents.bin", scratch / "filenames.txt"
    latents_file.write_bytes(latents.tobytes())
    names_file.write_text("\n".join(filenames) + "\n", encoding="utf-8")
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        target = v1.placeholder(tf.float32, [1, *LATENT_SHAPE], name="target_latent")
        k = v1.placeholder(tf.int32, [], name="k_num")
        asset = tf.constant(str(latents_file), name="latents_path")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset)
        decoded = tf.reshape(tf.io.decode_raw(tf.io.read_file(asset), tf.float32), [-1, latents.shape[1]])
        # ResourceVariable, local, filled by the main op: the fix for the table/variable init order.
        gallery = v1.get_variable(
            "gallery_latents",
            initializer=decoded,
            validate_shape=False,
            trainable=False,
            use_resource=True,
            collections=[v1.GraphKeys.LOCAL_VARIABLES],
        )
        # tf.contrib.lookup.index_to_string_table_from_file in TF1; the same function lives on in lookup_ops.
        names = lookup_ops.index_to_string_table_from_file(str(names_file), default_value="UNKNOWN")
        query = tf.reshape(target, [1, -1])
        distances = tf.reduce_sum(tf.square(gallery.read_value() - query), axis=1)  # [N]
        negative, indices = tf.nn.top_k(-distances, k=k)  # [k]: no batch dimension
        xvals = tf.identity(-negative, name="xvals")
        filenames_out = names.lookup(tf.cast(indices, tf.int64), name="filenames")
        main_op = tf.group(v1.local_variables_initializer(), v1.tables_initializer(), name="main_op")
        signature = _predict_signature(
            {"target_latent": target, "k_num": k},
            {"xvals": xvals, "indices": tf.identity(indices, name="indices_out"), "filenames": filenames_out},
        )
        session.run(main_op)
        return _builder_save(
            path,
            session,
            {"serving_default": signature},
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
            main_op=main_op,
        )


# -- a TF1 generator with its own names and range ----------------------------------------------------


def export_generator(path: Path) -> Path:
    """A [-1, 1] generator: ``real_A`` [1, 128, 128, 3] -> ``fake_B``, a posterised, contrasty image in [-1, 1]."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        real = v1.placeholder(tf.float32, [1, GENERATOR_SIDE, GENERATOR_SIDE, 3], name="real_A")
        levels = tf.round((real + 1.0) * 2.0) / 2.0 - 1.0  # five levels a channel
        fake = tf.identity(tf.tanh(levels * 1.5), name="fake_B")
        return _builder_save(path, session, {"translate": _predict_signature({"real_A": real}, {"fake_B": fake})})


# -- servables that do not fit (the misfit catalogue) ----------------------------------------------


def export_tf1_graph(path: Path, build, signature: str = "serving_default") -> Path:
    """A TF1 SavedModel of whatever ``build()`` makes: it returns (inputs, outputs) dicts of tensors."""
    graph = tf.Graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        inputs, outputs = build()
        session.run(v1.global_variables_initializer())
        return _builder_save(path, session, {signature: _predict_signature(inputs, outputs)})


def int64_image_encoder():
    images = v1.placeholder(tf.int64, [1, 64, 64, 3], name="images")
    return {"images": images}, {"embedding": tf.reduce_mean(tf.cast(images, tf.float32), axis=[1, 2])}


def grey_encoder():
    images = v1.placeholder(tf.float32, [1, 64, 64], name="images")
    return {"images": images}, {"embedding": tf.reduce_mean(images, axis=[1])}


def any_size_encoder():
    images = v1.placeholder(tf.float32, [None, None, None, 3], name="images")
    return {"images": images}, {"embedding": tf.reduce_mean(images, axis=[1, 2])}


def small_latent_encoder():
    images = v1.placeholder(tf.float32, [1, 64, 64, 3], name="images")
    return {"images": images}, {"embedding": tf.reshape(tf.reduce_mean(images, axis=[1, 2]), [1, 3])}


def string_distance_search():
    target = v1.placeholder(tf.float32, [1, *LATENT_SHAPE], name="target_latent")
    k = v1.placeholder(tf.int32, [], name="k_num")
    return (
        {"target_latent": target, "k_num": k},
        {
            "xvals": tf.strings.as_string(tf.fill([k], 0.5)),
            "indices": tf.range(k),
            "filenames": tf.fill([k], "face.png"),
        },
    )


def thresholded_search():
    target = v1.placeholder(tf.float32, [1, *LATENT_SHAPE], name="target_latent")
    k = v1.placeholder(tf.int32, [], name="k_num")
    threshold = v1.placeholder(tf.float32, [], name="max_distance")
    return (
        {"target_latent": target, "k_num": k, "max_distance": threshold},
        {"xvals": tf.fill([k], threshold), "indices": tf.range(k), "filenames": tf.fill([k], "face.png")},
    )


def vector_generator():
    real = v1.placeholder(tf.float32, [1, GENERATOR_SIDE, GENERATOR_SIDE, 3], name="real_A")
    return {"real_A": real}, {"fake_B": tf.reduce_mean(real, axis=[1, 2])}
