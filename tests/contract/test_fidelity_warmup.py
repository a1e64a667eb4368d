"""Warmup by TF Serving's rules, the same expectations of the embedded runtime and of the protocol double.

saved_model_warmup_util_test.cc (NoWarmupDataFile, WarmupDataFileEmpty, UnsupportedFileFormat,
TooManyWarmupRecords, UnparsableRecord, RunSuccess, RunFailure) and saved_model_warmup_test.cc
(MixedWarmupData, UnsupportedLogType_SessionRun, UnsupportedLogType_PredictStreamed): each case
publishes a new version of a TF1 model with Predict, Classify and Regress signatures, whose warmup
file holds the case's records, and looks at the state the load ends in. A failed warmup is a failed
load: the version is END with the warmup's error and the version before it serves on.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from app.serving.base import ModelRef
from tests.support import servables
from tests.support.fidelity import KINDS, Server, publish, start_server
from tests.support.waiting import wait_for

CONFIG = 'model_config_list { config { name: "tf1" base_path: "/models/tf1" model_platform: "tensorflow" } }\n'
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"


@pytest.fixture(scope="module")
def tf1_export(tmp_path_factory) -> Path:
    return servables.export_half_plus_two_tf1(tmp_path_factory.mktemp("tf1") / "1")


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory, tf1_export: Path) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("warmup")
    shutil.copytree(tf1_export, root / "serving_models" / "tf1" / "1")
    (root / "serving_models.config").write_text(CONFIG, encoding="utf-8")
    started = start_server(request.param, root / "serving_models.config", max_load_retries=0)
    yield started
    started.close()


def _examples(*values: float) -> input_pb2.Input:
    found = input_pb2.Input()
    for value in values:
        found.example_list.examples.add().features.feature["x"].float_list.value.append(value)
    return found


def predict_log(inputs: dict | None = None) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tf1"
    for alias, value in ({"x": np.array([1.0], np.float32)} if inputs is None else inputs).items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def classify_log(signature: str = "classify_x_to_y", values: tuple = (2.0,)) -> prediction_log_pb2.PredictionLog:
    request = classification_pb2.ClassificationRequest(input=_examples(*values))
    request.model_spec.signature_name = signature
    return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))


def regress_log(signature: str = "regress_x_to_y") -> prediction_log_pb2.PredictionLog:
    request = regression_pb2.RegressionRequest(input=_examples(2.0, 3.0))
    request.model_spec.signature_name = signature
    return prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog(request=request))


def multi_inference_log() -> prediction_log_pb2.PredictionLog:
    request = inference_pb2.MultiInferenceRequest(input=_examples(1.0, 2.0, 3.0))
    for signature, method in [("classify_x_to_y", "classify"), ("regress_x_to_y", "regress")]:
        task = request.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "tf1", signature
    return prediction_log_pb2.PredictionLog(multi_inference_log=prediction_log_pb2.MultiInferenceLog(request=request))


def _with_records(records: list) -> Callable[[Path], None]:
    def fill(target: Path) -> None:
        shutil.copytree(target.parent / "1", target, dirs_exist_ok=True)
        servables.write_warmup(target, records)

    return fill


def _with_file(content: bytes) -> Callable[[Path], None]:
    def fill(target: Path) -> None:
        shutil.copytree(target.parent / "1", target, dirs_exist_ok=True)
        (target / WARMUP).parent.mkdir(parents=True, exist_ok=True)
        (target / WARMUP).write_bytes(content)

    return fill


CASES: dict[str, tuple[Callable[[Path], None], str, str | None]] = {
    # case: (what the version folder gets, its state's error code, the message or None)
    "1000 records (the most TF Serving replays)": (_with_records([predict_log()] * 1000), "OK", None),
    "1001 records": (
        _with_records([predict_log()] * 1001),
        "INVALID_ARGUMENT",
        "Number of warmup records exceeds the maximum (1000) at {warmup}",
    ),
    "predict, classify, regress and multi-inference records (MixedWarmupData)": (
        _with_records([predict_log(), classify_log(), regress_log(), multi_inference_log()]),
        "OK",
        None,
    ),
    "no warmup file": (_with_records([]), "OK", None),
    "an empty warmup file (WarmupDataFileEmpty)": (_with_file(b""), "OK", None),
    "a regress record is run: its signature must exist": (
        _with_records([regress_log("nope")]),
        "INVALID_ARGUMENT",
        "No signature was found with the name: nope",
    ),
    "a classify record is run: without examples it fails": (
        _with_records([classify_log(values=())]),
        "INVALID_ARGUMENT",
        "Input is empty.",
    ),
    "a predict record that fails (RunFailure)": (
        _with_records([predict_log({"x": np.array([1], np.int32)})]),
        "INVALID_ARGUMENT",
        "Expects arg[0] to be float but int32 is provided",
    ),
    "a session-run record": (
        _with_records([prediction_log_pb2.PredictionLog(session_run_log=prediction_log_pb2.SessionRunLog())]),
        "UNIMPLEMENTED",
        "Unsupported log_type for warmup: 5",
    ),
    "a predict-streamed record": (
        _with_records([prediction_log_pb2.PredictionLog(predict_streamed_log=prediction_log_pb2.PredictStreamedLog())]),
        "UNIMPLEMENTED",
        "Unsupported log_type for warmup: 7",
    ),
    "a record that is not a PredictionLog (UnparsableRecord)": (
        _with_records([b"\xff\xff\xff"]),
        "INVALID_ARGUMENT",
        "Failed to parse warmup record: \\xff\\xff\\xff from {warmup}",
    ),
    "a file that is not TFRecord (UnsupportedFileFormat)": (
        _with_file(b"these are not TFRecords"),
        "DATA_LOSS",
        "corrupted record at 0 (Is this even a TFRecord file?). Please verify your warmup data is in TFRecord format.",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_warmup_decides_the_load_as_tf_serving_does(server, case):
    fill, code, message = CASES[case]
    base = server.runtime.config.servables[0].base_path
    serving_before = max(s.version for s in server.backend.model_status("tf1") if s.state == "AVAILABLE")
    version = max(int(child.name) for child in base.iterdir() if child.name.isdigit()) + 1
    folder = publish(base, version, fill)

    def settled() -> bool:
        newest = server.backend.model_status("tf1")[0]
        return newest.version == version and newest.state in ("AVAILABLE", "END")

    wait_for(settled, 20, f"version {version} loaded or failed")
    status = server.backend.model_status("tf1")[0]
    assert status.error_code == code
    if message is None:
        assert status.state == "AVAILABLE"
        served = server.backend.predict_versioned(ModelRef("tf1"), {"x": np.array([4.0], np.float32)})
        assert (served.version, served.outputs["y"].tolist()) == (version, [4.0])
    else:
        assert status.state == "END"
        assert status.error_message == message.format(warmup=folder / WARMUP)
        assert server.backend.predict_versioned(ModelRef("tf1"), {"x": np.zeros([1], np.float32)}).version == (
            serving_before
        )
