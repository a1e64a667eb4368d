"""Warmup of a freshly loaded version, by TF Serving's rules: replay assets.extra/tf_serving_warmup_requests.

TF Serving (servables/tensorflow/saved_model_warmup_util.cc, saved_model_warmup.cc) reads the
file as TFRecords of ``PredictionLog`` and runs each record against the new version before it
serves: Predict, Classify, Regress and MultiInference records are run; a SessionRun or
PredictStreamed record fails the load (UNIMPLEMENTED); a record that does not parse, a file that
is not TFRecord, a failing record, and more than 1000 records all fail the load. Classify,
Regress and MultiInference records run through ``app.serving.examples``, as live calls do.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import message
from tensorflow_serving.apis import prediction_log_pb2

from app.errors import ServingStatus
from app.serving.examples import classify, multi_inference, regress
from app.serving.loaded_version import LoadedVersion, grpc_code_of

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords
_UNSUPPORTED_LOGS = ("session_run_log", "predict_streamed_log")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def run_warmup(servable: LoadedVersion) -> int:
    """Replay the version's warmup records; returns how many ran. Raises ServingStatus as TF Serving fails the load."""
    path = servable.path / WARMUP_FILE
    if not path.exists():
        return 0  # warmup data is optional
    count = 0
    try:
        for record in tf.compat.v1.io.tf_record_iterator(str(path)):
            try:
                entry = prediction_log_pb2.PredictionLog.FromString(record)
            except message.DecodeError:
                text = record.decode("utf-8", "backslashreplace")
                raise ServingStatus(_INVALID, f"Failed to parse warmup record: {text} from {path}") from None
            run_record(servable, entry)
            count += 1
            # Counted after the record ran, as TF Serving does: the 1001st record runs, then the load fails.
            if count > MAX_WARMUP_RECORDS:
                raise ServingStatus(
                    _INVALID, f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
                )
    except tf.errors.DataLossError as exc:
        raise ServingStatus(
            grpc.StatusCode.DATA_LOSS, f"{exc.message}. Please verify your warmup data is in TFRecord format."
        ) from exc
    except tf.errors.OpError as exc:  # the file cannot be opened or read
        raise ServingStatus(grpc_code_of(exc), exc.message) from exc
    return count


def run_record(servable: LoadedVersion, entry: prediction_log_pb2.PredictionLog) -> None:
    """Run one warmup record against the version; its response is not looked at, only its status."""
    kind = entry.WhichOneof("log_type")
    if kind == "predict_log":
        request = entry.predict_log.request
        servable.predict(
            request.model_spec.signature_name,
            dict(request.inputs),
            output_filter=list(request.output_filter),
            decode=tf.make_ndarray,
        )
    elif kind == "classify_log":
        request = entry.classify_log.request
        classify(servable, request.model_spec.signature_name, request.input)
    elif kind == "regress_log":
        request = entry.regress_log.request
        regress(servable, request.model_spec.signature_name, request.input)
    elif kind == "multi_inference_log":
        multi_inference(servable, entry.multi_inference_log.request)
    elif kind in _UNSUPPORTED_LOGS:
        number = prediction_log_pb2.PredictionLog.DESCRIPTOR.fields_by_name[kind].number
        raise ServingStatus(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {number}")
    # A record with no log at all is skipped, as TF Serving's switch falls through for it.
