"""Predict, metadata and status as TF Serving answers them, word for word, from the runtime and from the double.

The cases follow predict_util_test.cc (MissingOrEmptyModelSpec, EmptyInputList,
InputTensorsDontMatchModelSpecInputs, PredictionInvalidTensor, OutputFiltersDontMatchModelSpecOutputs,
InputTensorsHaveWrongType), get_model_status_impl_test.cc and TF Serving's message cut past 1024 bytes
(grpc_status_util.cc). Each request is one PredictRequest: the double gets it over gRPC, the runtime gets
its TensorProtos, and both must give the same status code and message; through the gateway's backends
they become the same GatewayError.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from app.errors import BadInput, ServingStatus, UnknownLabel, UnknownModel, UnknownSignature, UnknownVersion
from app.serving.base import ModelRef
from tests.support import servables
from tests.support.fidelity import KINDS, Server, start_server
from tests.support.gateway import make_serving_dir

X = np.array([0.0, 1.0, -4.0], dtype=np.float32)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
ADDER = 'config { name: "adder" base_path: "/models/adder" model_platform: "tensorflow" }'


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest, tmp_path_factory, exported_models: Path) -> Iterator[Server]:
    config = make_serving_dir(tmp_path_factory.mktemp("predict"), exported_models)
    servables.export_adder(config.parent / "serving_models" / "adder" / "1")
    config.write_text(servables.CONFIG.rstrip().removesuffix("}") + f"  {ADDER}\n}}\n", encoding="utf-8")
    started = start_server(request.param, config, poll_interval=0)
    yield started
    started.close()


def predict_request(
    name: str = "half_plus",
    inputs: dict[str, object] | None = None,
    *,
    signature: str = "",
    output_filter: tuple[str, ...] = (),
    version: int | None = None,
    label: str | None = None,
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for alias, value in ({"x": X} if inputs is None else inputs).items():
        proto = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[alias].CopyFrom(proto)
    request.output_filter.extend(output_filter)
    return request


def _feed_name(server: Server, model: str, alias: str) -> str:
    return server.runtime.signature_defs(model)[1]["serving_default"].inputs[alias].name


def _unparsable_float() -> tensor_pb2.TensorProto:
    """A float tensor of 3 elements whose tensor_content holds 5 bytes: Tensor::FromProto refuses it."""
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_content=b"\x00" * 5)
    proto.tensor_shape.dim.add(size=3)
    return proto


def _bool_scalar() -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_BOOL, bool_val=[True])  # no shape: a scalar


CASES = {
    "empty model name": (
        predict_request(""),
        INVALID,
        "ModelSpec has no name specified.",
    ),
    "unknown model": (
        predict_request("nobody"),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nobody)",
    ),
    "unknown model, and tensors that do not parse: the servable is looked up first": (
        predict_request("nobody", {"x": _unparsable_float()}),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Latest(nobody)",
    ),
    "unknown version": (
        predict_request(version=7),
        grpc.StatusCode.NOT_FOUND,
        "Servable not found for request: Specific(half_plus, 7)",
    ),
    "unknown label": (
        predict_request(label="gold"),
        INVALID,
        "Unrecognized servable version label: gold",
    ),
    "unknown signature, and tensors that do not parse": (
        predict_request(signature="nope", inputs={"x": _unparsable_float()}),
        grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.',
    ),
    "no input": (
        predict_request(inputs={}),
        INVALID,
        "input size does not match signature: 0!=1 len({}) != len({x}). Sent extra: {}. Missing but required: {x}.",
    ),
    "an input too many": (
        predict_request(inputs={"x": X, "z": X}),
        INVALID,
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}.",
    ),
    "unknown aliases (predict_util_test's unknown_key1, unknown_key2)": (
        predict_request("adder", {"unknown_key1": X, "unknown_key2": X}),
        INVALID,
        lambda server: (
            f"Signature input alias: a(feed name: {_feed_name(server, 'adder', 'a')}) not found in request and no "
            "default value provided. Inputs expected to be in the request {unknown_key1,unknown_key2}, or default "
            "input alias set: "
        ),
    ),
    "one alias wrong of two": (
        predict_request("adder", {"a": X, "c": X}),
        INVALID,
        lambda server: (
            f"Signature input alias: b(feed name: {_feed_name(server, 'adder', 'b')}) not found in request and no "
            "default value provided. Inputs expected to be in the request {a,c}, or default input alias set: "
        ),
    ),
    "a tensor that does not parse": (
        predict_request(inputs={"x": _unparsable_float()}),
        INVALID,
        "tensor parsing error: x",
    ),
    "int32 for float": (
        predict_request(inputs={"x": X.astype(np.int32)}),
        INVALID,
        "Expects arg[0] to be float but int32 is provided",
    ),
    "a bool scalar for a float vector (PredictionInvalidTensor)": (
        predict_request(inputs={"x": _bool_scalar()}),
        INVALID,
        "Expects arg[0] to be float but bool is provided",
    ),
    "strings for float (InputTensorsHaveWrongType)": (
        predict_request(inputs={"x": np.array([b"any_value"], dtype=object)}),
        INVALID,
        "Expects arg[0] to be float but string is provided",
    ),
    "float64 for float": (
        predict_request(inputs={"x": X.astype(np.float64)}),
        INVALID,
        "Expects arg[0] to be float but double is provided",
    ),
    "unknown output alias": (
        predict_request(output_filter=("output_filter",)),
        INVALID,
        "output tensor alias not found in signature: output_filter Outputs expected to be in the set {y}.",
    ),
    "an output alias twice": (
        predict_request(output_filter=("y", "y")),
        INVALID,
        "duplicate output tensor alias: y",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_predict_answers_as_tf_serving(server, case):
    request, code, message = CASES[case]
    expected = message(server) if callable(message) else message
    assert server.tf_serving_answer(request) == (code, expected)


def test_shapes_mismatched_inside_the_graph_fail_there(server):
    """No shape is checked before the session: [3] + [2] fails in the add op, with TensorFlow's own words."""
    code, message = server.tf_serving_answer(predict_request("adder", {"a": X, "b": X[:2]}))
    assert code == INVALID
    assert message.startswith("Incompatible shapes: [3] vs. [2]")


def test_a_shape_the_signature_does_not_declare_runs(server):
    assert server.tf_serving_answer(predict_request(inputs={"x": X.reshape(3, 1)})) == (grpc.StatusCode.OK, "")
    out = server.backend.predict(ModelRef("half_plus"), {"x": X.reshape(3, 1)})
    np.testing.assert_allclose(out["y"], 0.5 * X.reshape(3, 1) + 3)


def test_a_message_past_1024_bytes_is_cut_as_tf_serving_cuts_it(server):
    aliases = {f"input_number_{n:04d}": X for n in range(120)}
    code, message = server.tf_serving_answer(predict_request(inputs=aliases))
    full = (
        f"input size does not match signature: 120!=1 len({{{','.join(sorted(aliases))}}}) != len({{x}}). "
        f"Sent extra: {{{','.join(sorted(aliases))}}}. Missing but required: {{x}}."
    )
    assert len(full) > 1024
    assert (code, message) == (INVALID, full[:1024] + "...TRUNCATED")
    with pytest.raises(BadInput) as caught:
        server.backend.predict(ModelRef("half_plus"), aliases)
    assert caught.value.message == f"half_plus: {full[:1024]}...TRUNCATED"


@pytest.mark.parametrize(
    ("ref", "inputs", "error", "message"),
    [
        (ModelRef("nobody"), {"x": X}, UnknownModel, "Servable not found for request: Latest(nobody)"),
        (ModelRef("half_plus", version=7), {"x": X}, UnknownVersion, "Servable not found for request: Specific"),
        (ModelRef("half_plus", label="gold"), {"x": X}, UnknownLabel, "Unrecognized servable version label: gold"),
        (ModelRef("half_plus", signature="nope"), {"x": X}, UnknownSignature, 'Serving signature key "nope" not'),
        (ModelRef("half_plus"), {"x": X.astype(np.int32)}, BadInput, "Expects arg[0] to be float but int32 is"),
        (ModelRef("adder"), {"a": X, "b": X[:2]}, BadInput, "Incompatible shapes: [3] vs. [2]"),
    ],
    ids=lambda v: str(v) if isinstance(v, ModelRef) else None,
)
def test_the_gateway_gets_the_same_error_from_either_server(server, ref, inputs, error, message):
    with pytest.raises(error) as caught:
        server.backend.predict(ref, inputs)
    assert type(caught.value) is error
    assert caught.value.message.startswith(f"{ref.name}: {message}")


# -- status and metadata ---------------------------------------------------------------------------


def _status_answer(server: Server, name: str, version: int | None) -> tuple[grpc.StatusCode, str, list]:
    """GetModelStatus: the code, the message, and (version, state) newest first."""
    if server.double is not None:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        with grpc.insecure_channel(server.double.address) as channel:
            try:
                response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
            except grpc.RpcError as exc:
                return exc.code(), exc.details(), []
        state = get_model_status_pb2.ModelVersionStatus.State
        return grpc.StatusCode.OK, "", [(s.version, state.Name(s.state)) for s in response.model_version_status]
    try:
        statuses = server.runtime.status(name, version)
    except ServingStatus as exc:
        return exc.status, exc.message, []
    return grpc.StatusCode.OK, "", [(s.version, s.state) for s in statuses]


@pytest.mark.parametrize(
    ("name", "version", "answer"),
    [
        ("half_plus", None, (grpc.StatusCode.OK, "", [(2, "AVAILABLE"), (1, "AVAILABLE")])),
        ("half_plus", 1, (grpc.StatusCode.OK, "", [(1, "AVAILABLE")])),
        ("half_plus", 9, (grpc.StatusCode.NOT_FOUND, "Could not find version 9 of model half_plus", [])),
        ("nobody", None, (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nobody", [])),
    ],
)
def test_status_answers_as_tf_serving(server, name, version, answer):
    assert _status_answer(server, name, version) == answer


@pytest.mark.parametrize("server", ["grpc"], indirect=True)
def test_wire_only_checks_of_the_double(server):
    """What is checked only on the wire (a request without a model_spec, metadata fields), as TF Serving words it."""
    with grpc.insecure_channel(server.double.address) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        status = model_service_pb2_grpc.ModelServiceStub(channel)
        answers = []
        for call, request in [
            (predict.Predict, predict_pb2.PredictRequest()),
            (status.GetModelStatus, get_model_status_pb2.GetModelStatusRequest()),
            (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest()),
            (predict.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "x"})),
            (
                predict.GetModelMetadata,
                get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "x"}, metadata_field=["graph"]),
            ),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=10)
            answers.append((caught.value.code(), caught.value.details()))
    assert answers == [
        (INVALID, "Missing ModelSpec"),
        (INVALID, "Missing ModelSpec"),
        (INVALID, "Missing ModelSpec"),
        (INVALID, "GetModelMetadataRequest must specify at least one metadata_field"),
        (INVALID, "Metadata field graph is not supported"),
    ]
