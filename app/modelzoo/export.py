"""Writing servables: a tf.Module saved as <base>/<version>/ with warmup records, renamed into place atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from app.serving import tensors
from app.serving.layout import ExtraFile, write_extra_files, write_version

WARMUP_RELATIVE_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
# The most one variable of a servable may hold: a TensorProto (how a tensor is serialised, e.g. as a
# variable's initial value or in a gRPC reply) cannot exceed 2 GiB. Larger arrays are split by rows.
MAX_VARIABLE_BYTES = 2**31 - 1
# What a string costs in a TensorProto beyond its bytes (a length prefix), counted generously.
_STRING_OVERHEAD_BYTES = 16


def row_parts(rows: np.ndarray, max_bytes: int = MAX_VARIABLE_BYTES) -> list[tuple[int, np.ndarray]]:
    """``rows`` split along its first axis into (first row, part) pieces of at most ``max_bytes`` each.

    A piece holds at least one row. Strings (an object array of bytes) count their length plus a
    small overhead each; numbers count their item size.
    """
    count = len(rows)
    if rows.dtype == object:
        sizes = np.fromiter((len(item) + _STRING_OVERHEAD_BYTES for item in rows), np.int64, count)
    else:
        sizes = np.full(count, rows.itemsize * int(np.prod(rows.shape[1:], dtype=np.int64)), np.int64)
    parts = []
    start = 0
    ends = np.cumsum(sizes)
    while start < count:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_bytes, side="right")))
        parts.append((start, rows[start:stop]))
        start = stop
    return parts


def gather_from_parts(parts: Sequence[tf.Variable], starts: Sequence[int], indices: tf.Tensor) -> tf.Tensor:
    """``tf.gather`` over the rows of several variables that together hold one array (``starts``: each
    part's first row), for a handful of ``indices`` (each part is gathered from, and the right one kept).

    The variables are gathered from directly (ResourceGather): reading a string variable whole
    (ReadVariableOp) copies every string, milliseconds per request for a million file names.
    """
    if len(parts) == 1:
        return tf.gather(parts[0], indices)
    found = None
    for part, start in zip(parts, starts, strict=True):
        rows = int(part.shape[0])
        local = indices - start
        got = tf.gather(part, tf.clip_by_value(local, 0, rows - 1))
        found = got if found is None else tf.where((local >= 0) & (local < rows), got, found)
    return found


def warmup_log(
    model_name: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default"
) -> prediction_log_pb2.PredictionLog:
    """One warmup record: a PredictRequest as TF Serving replays it when the version loads."""
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for alias, value in inputs.items():
        # to_tensor_proto builds the gateway's TensorProto (app.serving.protos), not TensorFlow's: hand over bytes.
        request.inputs[alias].ParseFromString(tensors.to_tensor_proto(value).SerializeToString())
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def write_warmup_requests(saved_model_dir: Path, records: Sequence[prediction_log_pb2.PredictionLog]) -> Path:
    """Write records to assets.extra/tf_serving_warmup_requests (a TFRecord file of PredictionLog)."""
    path = saved_model_dir / WARMUP_RELATIVE_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    return path


def save_servable(
    module: tf.Module,
    version_dir: Path,
    signatures: Mapping[str, tf.types.experimental.ConcreteFunction | tf.types.experimental.PolymorphicFunction],
    warmup: Sequence[prediction_log_pb2.PredictionLog] = (),
    *,
    extra_files: Mapping[str, ExtraFile] | None = None,
    replace: bool = False,
) -> Path:
    """Save ``module`` as the SavedModel ``version_dir`` (e.g. serving_models/x/3), whole or not at all.

    ``extra_files`` (relative path -> bytes, a file to link, or a function that writes the file) go under
    assets.extra/, which TF Serving ignores and the gateway may read (gallery thumbnails, the gallery
    record). An existing version is an error unless ``replace`` is set.
    """

    def fill(staging: Path) -> None:
        tf.saved_model.save(module, str(staging), signatures=dict(signatures))
        if warmup:
            write_warmup_requests(staging, warmup)
        write_extra_files(staging, extra_files or {})

    return write_version(Path(version_dir), fill, replace=replace)
