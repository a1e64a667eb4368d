"""`python -m app.model_server` as a process: refused command lines, start failures, batching, and the drain on SIGTERM.

Calls in flight are made observable by the Sleeper model (tests/support/model_server.py): it writes a marker file
when the server has started running it, then takes as long as it is asked to.
"""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

from tests.support.model_api_servables import export_half_plus_two
from tests.support.model_server import REPO, command, export_sleeper, model_server, run_once
from tests.support.programs import port_open
from tests.support.servables import write_warmup

pytestmark = pytest.mark.slow
DEADLINE = 30.0


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle-models")
    export_half_plus_two(root / "half_plus_two" / "123")
    export_sleeper(root / "sleeper" / "1")
    return root


def test_an_unknown_flag_is_one_line_naming_it_then_the_usage_and_exit_2():
    done = run_once(["--model_base_path=/srv/models/m", "--enable_batchin=true"], timeout=60)
    assert done.returncode == 2
    first, second, *_ = done.stderr.splitlines()
    assert first == "python -m app.model_server: unknown flag: --enable_batchin (did you mean --enable_batching?)"
    assert second == "usage: python -m app.model_server"
    assert "Traceback" not in done.stderr


def test_a_server_that_cannot_start_says_why_in_one_line_and_exits_1(tmp_path):
    done = run_once(["--port=1", "--model_name=m", f"--model_base_path={tmp_path / 'missing'}"])
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("Failed to start server")]
    assert line == (
        f"Failed to start server. Error: INVALID_ARGUMENT: Could not find base path {tmp_path / 'missing'} for "
        "servable m"
    )
    assert "Traceback" not in done.stderr


def test_a_relative_base_path_is_refused_as_tf_serving_refuses_it(models):
    done = run_once(["--port=1", "--model_name=m", "--model_base_path=half_plus_two"])
    assert done.returncode == 1
    assert "Expected model m to have an absolute path or URI; got base_path()=half_plus_two" in done.stderr


def test_version():
    done = run_once(["--version"], timeout=120)
    assert done.returncode == 0
    assert done.stdout.startswith("TensorFlow ModelServer: 2.20.0-compatible")
    assert f"TensorFlow Library: {tf.__version__}" in done.stdout


def sleeper_request(marker: Path, seconds: float) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "sleeper"
    request.inputs["marker"].CopyFrom(tf.make_tensor_proto(str(marker)))
    request.inputs["seconds"].CopyFrom(tf.make_tensor_proto(seconds, dtype=tf.float32))
    return request


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared: the call did not reach the model"
        time.sleep(0.02)


def test_sigterm_answers_the_calls_in_flight_on_both_ports_then_exits_0(models, tmp_path):
    arguments = ["--model_name=sleeper", f"--model_base_path={models / 'sleeper'}", "--enable_model_warmup=false"]
    with model_server(arguments, tmp_path) as server, server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        grpc_marker, rest_marker = tmp_path / "grpc-started", tmp_path / "rest-started"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            over_grpc = stub.Predict.future(sleeper_request(grpc_marker, 2.0), timeout=DEADLINE)
            body = {"inputs": {"marker": str(rest_marker), "seconds": 2.0}}
            over_rest = pool.submit(server.rest, "POST", "/v1/models/sleeper:predict", body)
            wait_for(grpc_marker)
            wait_for(rest_marker)
            stopped_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            # Both ports close at once: nothing new is taken while the two calls finish.
            deadline = time.monotonic() + 5
            while port_open(server.grpc_port) or port_open(server.rest_port):
                assert time.monotonic() < deadline, "a port still takes connections after SIGTERM"
                time.sleep(0.02)
            assert server.process.poll() is None  # still draining
            assert tf.make_ndarray(over_grpc.result().outputs["waited"]) >= 2.0
            status, answer = over_rest.result(timeout=DEADLINE)
            assert status == 200 and answer["outputs"] >= 2.0
        assert server.process.wait(timeout=30) == 0
        assert time.monotonic() - stopped_at < 15  # the drain is bounded (8 s), then the models unload
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/sleeper", timeout=5)


def test_batching_merges_concurrent_predicts_and_refuses_what_tf_serving_cannot_batch(models, tmp_path):
    """A batch that only runs full (its timeout is a minute away): four one-row calls are answered at once only
    because they were merged into one run of four."""
    parameters = tmp_path / "batching.txt"
    parameters.write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 60000000 }\nnum_batch_threads { value: 1 }\n",
        encoding="utf-8",
    )
    arguments = [
        "--model_name=half_plus_two", f"--model_base_path={models / 'half_plus_two'}",
        "--enable_batching", f"--batching_parameters_file={parameters}", "--enable_model_warmup=false",
    ]  # fmt: skip
    with model_server(arguments, tmp_path, rest=False) as server, server.channel() as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def request(value) -> predict_pb2.PredictRequest:
            found = predict_pb2.PredictRequest()
            found.model_spec.name = "half_plus_two"
            found.inputs["x"].CopyFrom(tf.make_tensor_proto(value, dtype=tf.float32))
            return found

        started = time.monotonic()
        calls = [stub.Predict.future(request([[float(i)]]), timeout=DEADLINE) for i in range(4)]
        answers = [tf.make_ndarray(call.result().outputs["y"]).tolist() for call in calls]
        assert answers == [[[2.0]], [[2.5]], [[3.0]], [[3.5]]]
        assert time.monotonic() - started < DEADLINE
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request(np.float32(1.0)), DEADLINE)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "Batching Run() input tensors must have at least one dimension"
        with pytest.raises(grpc.RpcError) as too_large:
            stub.Predict(request([[1.0]] * 5), DEADLINE)
        assert too_large.value.details() == "Task size 5 is larger than maximum input batch size 4"


def test_sigterm_while_the_models_load_gives_up_the_start_and_exits_0(tmp_path):
    """A warmup record that takes two seconds, and says when it started: SIGTERM then stops the loading server."""
    marker = tmp_path / "warming-up"
    version = export_sleeper(tmp_path / "models" / "sleeper" / "1")
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(sleeper_request(marker, 2.0))
    write_warmup(version, [log])
    process = subprocess.Popen(
        command(["--port=1", "--model_name=sleeper", f"--model_base_path={version.parent}"]),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(marker, timeout=120)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-3000:]
    assert output.strip().splitlines()[-1] == "python -m app.model_server: stopped by signal 15 while loading"
