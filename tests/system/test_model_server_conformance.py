"""`python -m app.model_server` against clients nobody here wrote: TF Serving's documented REST examples, replayed
with curl and requests, and the official tensorflow-serving-api stubs with tf.make_tensor_proto, as the seed's clients
(and TF Serving's example/resnet_client_grpc.py) call them. In single-model mode and in config-file mode.

The servables are TF Serving's own test models as its docs use them: half_plus_two (the REST handler test's
saved_model_half_plus_two_2_versions, version 123) and half_plus_three (api_rest.md's example), rebuilt by
tests/support.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.support import programs
from tests.support.model_api_servables import export_classifier, export_half_plus_two
from tests.support.model_server import RunningModelServer, export_half_plus_three, model_server

pytestmark = pytest.mark.slow
DEADLINE = 30.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TF Serving's testdata layout: <model>/<zero-padded version>/, real paths (no /models/ here)."""
    root = tmp_path_factory.mktemp("model-server-models")
    export_half_plus_two(root / "half_plus_two" / "00000123")
    export_half_plus_three(root / "half_plus_three" / "00000123")
    export_classifier(root / "classifier" / "1")
    return root


def config_text(root: Path, *names: str) -> str:
    """A ModelServerConfig listing ``names`` under ``root`` (absolute base paths), built as a client would."""
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=str(root / name), model_platform="tensorflow")
    return text_format.MessageToString(config)


@pytest.fixture(scope="module")
def single(models: Path, tmp_path_factory) -> Iterator[RunningModelServer]:
    """Single-model mode, as the docs start TF Serving: --model_name and --model_base_path."""
    arguments = ["--model_name=half_plus_two", f"--model_base_path={models / 'half_plus_two'}"]
    with model_server(arguments, tmp_path_factory.mktemp("single")) as server:
        yield server


@pytest.fixture(scope="module")
def configured(models: Path, tmp_path_factory) -> Iterator[RunningModelServer]:
    """Config-file mode with Prometheus monitoring on the REST port."""
    folder = tmp_path_factory.mktemp("configured")
    config = folder / "models.config"
    config.write_text(config_text(models, "half_plus_two", "half_plus_three"), encoding="utf-8")
    monitoring = folder / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    arguments = [
        f"--model_config_file={config}",
        f"--monitoring_config_file={monitoring}",
        "--rest_api_enable_cors_support",
        f"--grpc_socket_path={folder / 'grpc.sock'}",
    ]
    with model_server(arguments, folder) as server:
        server.socket = folder / "grpc.sock"  # type: ignore[attr-defined]
        yield server


# -- REST: TF Serving's documented examples ----------------------------------------------------------------------

STATUS_123 = {
    "model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
}


def curl(server: RunningModelServer, *arguments: str) -> tuple[int, str]:
    """curl as the docs run it, against the server's REST port; the status and the body."""
    program = programs.require("curl", "CURL", package="curl")
    command = [program, "-s", "-w", "\\n%{http_code}", *arguments]
    command = [part.replace("localhost:8501", f"127.0.0.1:{server.rest_port}") for part in command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE, check=True)
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def test_docker_md_half_plus_two_predict_with_curl(single):
    """docker.md: `curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST .../v1/models/half_plus_two:predict`."""
    status, body = curl(
        single, "-d", '{"instances": [1.0, 2.0, 5.0]}', "-X", "POST",
        "http://localhost:8501/v1/models/half_plus_two:predict",
    )  # fmt: skip
    assert status == 200
    assert json.loads(body) == {"predictions": [2.5, 3.0, 4.5]}


def test_api_rest_md_model_status(single):
    assert single.rest("GET", "/v1/models/half_plus_two") == (200, STATUS_123)
    assert single.rest("GET", "/v1/models/half_plus_two/versions/123") == (200, STATUS_123)


def test_api_rest_md_a_wrong_model_is_404_with_tf_servings_message(single):
    status, body = curl(
        single, "-d", '{"instances": [1.0,5.0]}', "-X", "POST", "http://localhost:8501/v1/models/half:predict"
    )
    assert status == 404
    assert json.loads(body) == {"error": "Servable not found for request: Latest(half)"}


def test_api_rest_md_metadata_lists_every_signature(single):
    status, body = single.rest("GET", "/v1/models/half_plus_two/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "regress_x_to_y", "classify_x_to_y"} <= set(signatures)
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_api_rest_md_classify_regress_and_the_columnar_form(single):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert single.rest("POST", "/v1/models/half_plus_two:classify", body) == (
        200, {"results": [[["", 2.5]], [["", 3.0]]]},
    )  # fmt: skip
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert single.rest("POST", "/v1/models/half_plus_two:regress", body) == (200, {"results": [2.5, 3.0]})
    assert single.rest("POST", "/v1/models/half_plus_two:predict", {"inputs": [1.0, 2.0]}) == (
        200, {"outputs": [2.5, 3.0]},
    )  # fmt: skip
    assert single.rest("POST", "/v1/models/half_plus_two/versions/123:predict", {"instances": [4.0]}) == (
        200, {"predictions": [4.0]},
    )  # fmt: skip


def test_api_rest_md_half_plus_three_predict_and_regress(configured):
    """api_rest.md's own example model, in config-file mode."""
    status, body = curl(
        configured, "-d", '{"instances": [1.0,2.0,5.0]}', "-X", "POST",
        "http://localhost:8501/v1/models/half_plus_three:predict",
    )  # fmt: skip
    assert (status, json.loads(body)) == (200, {"predictions": [3.5, 4.0, 5.5]})
    status, body = curl(
        configured, "-d", '{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}',
        "-X", "POST", "http://localhost:8501/v1/models/half_plus_three:regress",
    )  # fmt: skip
    assert (status, json.loads(body)) == (200, {"results": [3.5, 4.0]})
    assert configured.rest("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0]}) == (
        200, {"predictions": [2.5]},
    )  # fmt: skip


def test_the_prometheus_page_counts_requests_as_tf_serving_names_them(configured, tmp_path):
    configured.rest("POST", "/v1/models/half_plus_three:predict", {"instances": [1.0]})
    configured.rest("POST", "/v1/models/no_such_model:predict", {"instances": [1.0]})
    with configured.channel() as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_three"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, DEADLINE)
    status, page = configured.rest("GET", "/monitoring/prometheus/metrics")
    assert status == 200
    counts = {
        (sample.labels["model_name"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(page)
        if family.name == ":tensorflow:serving:request_count"
        for sample in family.samples
    }
    assert counts[("half_plus_three", "OK")] >= 2  # one REST, one gRPC
    assert counts[("no_such_model", "NOT_FOUND")] >= 1
    assert 'API="Predict",entrypoint="GRPC"' in page and 'API="predict",entrypoint="REST"' in page
    promtool = shutil.which("promtool")
    if promtool:  # Prometheus's own linter reads the page too (Debian's prometheus package)
        checked = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, text=True)
        assert "error" not in (checked.stdout + checked.stderr).lower(), checked.stdout + checked.stderr


def test_cors_headers_and_paths_outside_the_api(configured, single):
    """--rest_api_enable_cors_support adds TF Serving's three headers to API answers, errors included; a path that is
    neither the API nor the Prometheus page is 404."""
    port = configured.rest_port
    answer = requests.post(f"http://127.0.0.1:{port}/v1/models/nope:predict", data="{}", timeout=DEADLINE)
    assert answer.status_code == 404
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Access-Control-Allow-Methods"] == "POST, GET"
    assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type"
    preflight = requests.options(
        f"http://127.0.0.1:{port}/v1/models/half_plus_two:predict", headers={"Origin": "https://a.example"}, timeout=5
    )
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert (
        "Access-Control-Allow-Origin"
        not in requests.get(f"http://127.0.0.1:{single.rest_port}/v1/models/half_plus_two", timeout=5).headers
    )
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 404
    assert (
        requests.get(f"http://127.0.0.1:{single.rest_port}/monitoring/prometheus/metrics", timeout=5).status_code == 404
    )


def test_grpc_on_the_unix_socket_too(configured):
    with grpc.insecure_channel(f"unix:{configured.socket}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(predict_request("half_plus_three", [1.0]), DEADLINE)
    assert tf.make_ndarray(result.outputs["y"]).tolist() == [3.5]


# -- gRPC: the official stubs, as a seed-style client calls them ---------------------------------------------------


def predict_request(name: str, values, *, signature: str = "", version: int | None = None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature:
        request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    return request


def test_predict_with_make_tensor_proto(single):
    with single.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(predict_request("half_plus_two", [1.0, 2.0, 5.0]), DEADLINE)
    assert tf.make_ndarray(result.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    assert (result.model_spec.name, result.model_spec.version.value) == ("half_plus_two", 123)
    assert result.model_spec.signature_name == "serving_default"


def test_an_unknown_model_is_not_found_with_tf_servings_message(single):
    with single.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Predict(predict_request("half", [1.0]), DEADLINE)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert failed.value.details() == "Servable not found for request: Latest(half)"


def test_get_model_status_and_metadata(single):
    with single.channel() as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "half_plus_two"}), DEADLINE
        )
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "half_plus_two"
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(request, DEADLINE)
    (version,) = status.model_version_status
    assert (version.version, version.state, version.status.error_code) == (
        123, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0,
    )  # fmt: skip
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].name == "x:0"
    assert metadata.model_spec.version.value == 123


def examples_input(request, *values: float) -> None:
    for value in values:
        request.input.example_list.examples.add().features.feature["x"].float_list.value.append(value)


def test_classify_regress_and_multi_inference(single):
    with single.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        classify = classification_pb2.ClassificationRequest()
        classify.model_spec.name, classify.model_spec.signature_name = "half_plus_two", "classify_x_to_y"
        examples_input(classify, 1.0, 2.0)
        classified = stub.Classify(classify, DEADLINE)
        regress = regression_pb2.RegressionRequest()
        regress.model_spec.name, regress.model_spec.signature_name = "half_plus_two", "regress_x_to_y"
        examples_input(regress, 1.0, 2.0)
        regressed = stub.Regress(regress, DEADLINE)
        multi = inference_pb2.MultiInferenceRequest()
        for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
            task = multi.tasks.add(method_name=f"tensorflow/serving/{method}")
            task.model_spec.name, task.model_spec.signature_name = "half_plus_two", signature
        examples_input(multi, 4.0)
        inferred = stub.MultiInference(multi, DEADLINE)
    assert [c.classes[0].score for c in classified.result.classifications] == [2.5, 3.0]
    assert [r.value for r in regressed.result.regressions] == [2.5, 3.0]
    assert (regressed.model_spec.name, regressed.model_spec.version.value) == ("half_plus_two", 123)
    regression, classification = inferred.results
    assert [r.value for r in regression.regression_result.regressions] == [4.0]
    assert classification.classification_result.classifications[0].classes[0].score == 4.0
    assert (classification.model_spec.signature_name, classification.model_spec.version.value) == (
        "classify_x_to_y", 123,
    )  # fmt: skip


def test_multi_inference_refuses_tasks_of_two_models(single):
    with single.channel() as channel:
        multi = inference_pb2.MultiInferenceRequest()
        for name in ("half_plus_two", "other"):
            task = multi.tasks.add(method_name="tensorflow/serving/regress")
            task.model_spec.name, task.model_spec.signature_name = name, "regress_x_to_y"
        examples_input(multi, 1.0)
        with pytest.raises(grpc.RpcError) as failed:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).MultiInference(multi, DEADLINE)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.value.details() == "All ModelSpecs in a MultiInferenceRequest must access the same model name."


def test_reload_config_drops_and_adds_servables_as_tf_serving_does(models, tmp_path):
    """HandleReloadConfigRequest: the models the new config leaves out are unloaded (END), those it adds load, and a
    config TF Serving refuses changes nothing."""
    config = tmp_path / "models.config"
    config.write_text(config_text(models, "half_plus_two", "half_plus_three"), encoding="utf-8")
    with model_server([f"--model_config_file={config}"], tmp_path, rest=False) as server, server.channel() as channel:
        models_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def state(name: str) -> list[tuple[int, str]]:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            answer = models_stub.GetModelStatus(request, DEADLINE)
            return [
                (v.version, get_model_status_pb2.ModelVersionStatus.State.Name(v.state))
                for v in answer.model_version_status
            ]

        assert state("half_plus_three") == [(123, "AVAILABLE")]
        reload = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(config_text(models, "half_plus_two", "classifier"), reload.config)
        answer = models_stub.HandleReloadConfigRequest(reload, 120)
        assert answer.status.error_code == 0
        assert state("half_plus_three") == [(123, "END")]
        assert state("classifier") == [(1, "AVAILABLE")]
        with pytest.raises(grpc.RpcError) as gone:
            predictions.Predict(predict_request("half_plus_three", [1.0]), DEADLINE)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert tf.make_ndarray(predictions.Predict(predict_request("half_plus_two", [2.0]), DEADLINE).outputs["y"]) == [
            3.0
        ]

        refused = model_management_pb2.ReloadConfigRequest()
        refused.config.model_config_list.config.add(
            name="classifier", base_path="classifier", model_platform="tensorflow"
        )
        with pytest.raises(grpc.RpcError) as failed:
            models_stub.HandleReloadConfigRequest(refused, DEADLINE)
        assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert failed.value.details() == (
            "Expected model classifier to have an absolute path or URI; got base_path()=classifier"
        )
        assert state("half_plus_two") == [(123, "AVAILABLE")]  # nothing of the refused config applied
        assert state("classifier") == [(1, "AVAILABLE")]
