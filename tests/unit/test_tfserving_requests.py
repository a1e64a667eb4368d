"""TF Serving's REST requests decoded: the request cases of json_tensor_test.cc (tag 2.20.0), with the same
expectations, and more.

Each test named after a case of that file checks what it checks (the tensors made, the error's code and
words); the rest cover every dtype both ways, TF Serving's messages for rows and columns, classify and
regress bodies, and the fast path for big tensors agreeing with the walk.
"""

from __future__ import annotations

import json
import math

import grpc
import numpy as np
import pytest

from app.errors import ServingStatus
from app.protocols import tfserving_requests
from app.protocols.tfserving_answers import predict_response
from app.protocols.tfserving_reader import MAX_DEPTH, TOO_DEEP, parse
from app.protocols.tfserving_requests import PredictFormat, PredictRequest, examples_input, predict_request
from app.serving.protos.tensorflow.core.framework import types_pb2 as T
from app.serving.protos.tensorflow_serving.apis import input_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def predict(body: str | bytes, infomap: dict[str, int]) -> PredictRequest:
    """FillPredictRequestFromJson with the test's getmap(infomap)."""
    data = body.encode() if isinstance(body, str) else body
    return predict_request(parse(data), lambda _signature: infomap)


def fails(body: str | bytes, infomap: dict[str, int], code: grpc.StatusCode = INVALID) -> str:
    with pytest.raises(ServingStatus) as caught:
        predict(body, infomap)
    assert caught.value.status == code, caught.value.message
    return caught.value.message


def same(array: np.ndarray, expected, dtype) -> None:
    expected = np.asarray(expected, dtype=dtype)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)


# -- requests: json_tensor_test.cc --------------------------------------------------------------------------


def test_single_unnamed_tensor():
    request = predict('{"instances": [[1,2],[3,4],[5,6]]}', {"default": T.DT_INT32})
    assert request.format is PredictFormat.ROW and list(request.inputs) == ["default"]
    same(request.inputs["default"], [[1, 2], [3, 4], [5, 6]], np.int32)


TOO_DEEP_AT = f"JSON Parse error: {TOO_DEEP} at offset: "


def test_deeply_nested_well_formed():
    # A key nothing reads, nested half a million deep: RapidJSON's iterative parser takes it, and TF Serving with
    # it. The gateway does not: every level costs memory before anything reads it. It stops where the nesting goes
    # deeper than a request of a tensor of 64 dimensions needs (67 levels).
    prefix = '{"instances":[1], "nested":'
    body = prefix + "[" * 500_000 + "]" * 500_000 + "}"
    assert fails(body, {"default": T.DT_INT32}) == f"{TOO_DEEP_AT}{len(prefix) + MAX_DEPTH - 1}"
    within = prefix + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"  # the document's object is a level
    assert list(predict(within, {"default": T.DT_INT32}).inputs) == ["default"]


def test_deeply_nested_malformed():
    # TF Serving: "'signature_name' key must be a string value"; the gateway stops at the nesting first.
    prefix = '{"signature_name":'
    body = prefix + "[" * 500_000 + "]" * 500_000 + "}"
    assert fails(body, {"default": T.DT_INT32}) == f"{TOO_DEEP_AT}{len(prefix) + MAX_DEPTH - 1}"
    within = prefix + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"
    assert "key must be a string value" in fails(within, {"default": T.DT_INT32})


@pytest.mark.parametrize("layout", ["inputs", "instances"])
def test_tensors_of_more_dimensions_than_an_array_holds_are_refused(layout):
    def nested(rank: int, leaf: str = "1") -> str:
        return "[" * rank + leaf + "]" * rank

    if layout == "inputs":
        assert predict(f'{{"inputs": {nested(64)}}}', {"x": T.DT_FLOAT}).inputs["x"].shape == (1,) * 64
        message = fails(f'{{"inputs": {nested(65)}}}', {"x": T.DT_FLOAT})
        assert message == f"Shape [{','.join(['1'] * 65)}] has too many dimensions: 65, at most 64 are supported"
        assert "too many dimensions: 66" in fails(f'{{"inputs": {nested(66, "")}}}', {"x": T.DT_FLOAT})
    else:
        assert predict(f'{{"instances": {nested(64)}}}', {"x": T.DT_FLOAT}).inputs["x"].shape == (1,) * 64
        message = fails(f'{{"instances": {nested(65)}}}', {"x": T.DT_FLOAT})
        assert message.startswith("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Shape ")
        assert message.endswith("has too many dimensions: 65, at most 64 are supported")
        named = f'{{"instances": [{{"x": {nested(64, "")}}}]}}'
        assert "too many dimensions: 65" in fails(named, {"x": T.DT_FLOAT})


def test_mixed_input_for_float_tensor():
    request = predict('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": T.DT_FLOAT})
    same(request.inputs["default"], [1, 2.0, 3, 4, 5.003, 0.007, 0.0], np.float32)


def test_mixed_input_for_double_tensor():
    request = predict('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": T.DT_DOUBLE})
    same(request.inputs["default"], [1.0, 2, 3, 4, 0.662, 0, 0.0], np.float64)


def test_float_tensor_with_precision_loss():
    for body in ('{"instances": [1435774380]}', '{"instances": [1435774380.0]}'):
        same(predict(body, {"default": T.DT_FLOAT}).inputs["default"], [1435774380], np.float32)


def test_float_tensor_that_exceeds_max_returns_inf():
    biggest = float(np.finfo(np.float64).max)
    same(predict(f'{{"instances": [{biggest!r}]}}', {"default": T.DT_FLOAT}).inputs["default"], [np.inf], np.float32)
    same(predict(f'{{"instances": [{-biggest!r}]}}', {"default": T.DT_FLOAT}).inputs["default"], [-np.inf], np.float32)


def test_float_tensor_that_exceeds_min_returns_zero():
    tiny = float(np.finfo(np.float64).tiny)
    value = predict(f'{{"instances": [{tiny!r}]}}', {"default": T.DT_FLOAT}).inputs["default"]
    same(value, [0.0], np.float32)
    value = predict(f'{{"instances": [{-tiny!r}]}}', {"default": T.DT_FLOAT}).inputs["default"]
    assert value[0] == 0 and math.copysign(1, value[0]) < 0


def test_single_unnamed_tensor_with_signature():
    request = predict('{"signature_name": "predict_images", "instances": [[1,2]]}', {"default": T.DT_INT32})
    assert request.signature_name == "predict_images"
    same(request.inputs["default"], [[1, 2]], np.int32)


def test_tensor_from_non_null_terminated_buffer():
    body = b'{"instances": [[1,2],[3,4],[5,6]]}X'
    same(predict(body[:-1], {"default": T.DT_INT32}).inputs["default"], [[1, 2], [3, 4], [5, 6]], np.int32)


def test_string_tensors_keep_the_bytes_sent():
    # RapidJSON copies a string's bytes as they are, UTF-8 or not; so does the reader, and the tensor has them.
    request = predict(b'{"inputs": ["\xff\xfe", "caf\xc3\xa9", "\\u00e9"]}', {"x": T.DT_STRING})
    same(request.inputs["x"], [b"\xff\xfe", "café".encode(), "é".encode()], object)


def test_single_unnamed_tensor_base64_scalars():
    request = predict('{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}', {"default": T.DT_STRING})
    same(request.inputs["default"], [b"hello", b"world"], object)


def test_single_unnamed_tensor_base64_lists():
    body = '{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}'
    same(predict(body, {"default": T.DT_STRING}).inputs["default"], [[b"hello"], [b"world"]], object)


def test_single_named_tensor_base64():
    body = '{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}'
    same(predict(body, {"default": T.DT_STRING}).inputs["default"], [[[b"hello"], [b"world"]]], object)


def test_multiple_named_tensor():
    infomap = {
        "int_tensor": T.DT_INT32,
        "str_tensor": T.DT_STRING,
        "float_tensor": T.DT_FLOAT,
        "dbl_tensor": T.DT_DOUBLE,
    }
    request = predict(
        """{"instances": [
            {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],
             "dbl_tensor": [NaN]},
            {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"], "float_tensor": [2.0, Infinity],
             "dbl_tensor": [2.0]}
        ]}""",
        infomap,
    )
    assert request.format is PredictFormat.ROW and sorted(request.inputs) == sorted(infomap)
    same(request.inputs["int_tensor"], [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)
    same(request.inputs["str_tensor"], [[b"foo", b"bar"], [b"baz", b"bat"]], object)
    same(request.inputs["float_tensor"], [[1.0, np.nan], [2.0, np.inf]], np.float32)
    same(request.inputs["dbl_tensor"], [[np.nan], [2.0]], np.float64)


def test_single_unnamed_tensor_columnar_format():
    for body in ('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', '{"inputs": [[[1,2],[3,4],[5,6]]]}'):
        request = predict(body, {"int_tensor": T.DT_INT32})
        assert request.format is PredictFormat.COLUMNAR
        same(request.inputs["int_tensor"], [[[1, 2], [3, 4], [5, 6]]], np.int32)


def test_multiple_named_tensor_columnar_format():
    infomap = {"int_tensor": T.DT_INT32, "str_tensor": T.DT_STRING, "bin_tensor": T.DT_STRING}
    request = predict(
        '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"], '
        '"bin_tensor": { "b64" : "aGVsbG8=" }}}',
        infomap,
    )
    same(request.inputs["int_tensor"], [[[1, 2], [3, 4], [5, 6]]], np.int32)
    same(request.inputs["str_tensor"], [b"foo", b"bar"], object)
    same(request.inputs["bin_tensor"], b"hello", object)  # a scalar: shape []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("", "document is empty"),
        ('{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}', "must be a string value"),
        ('{"instances": [[1,2],[3,4],[5,6,7]], "inputs": [[1,2],[3,4],[5,6,7]]}', "Not formatted correctly"),
        ('{"instances": [[1,2],[3,4],[5,6,7]]}', "Expecting tensor size"),
        ('{"instances": [[1,2],[3,4],[[5,6]]]}', "Expecting shape"),
        ('{"instances": [1, [1]]}', "Expecting shape"),
        ('{"instances": [[1,2],["a", "b"]]}', "not of expected type"),
    ],
)
def test_single_unnamed_tensor_errors(body, words):
    assert words in fails(body, {"default": T.DT_INT32})


def test_multiple_named_tensor_errors():
    infomap = {"int_tensor": T.DT_INT32, "str_tensor": T.DT_STRING}
    shapes = """{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                               {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}"""
    assert "Expecting shape" in fails(shapes, infomap)
    sizes = """{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},
                              {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}"""
    assert "Expecting tensor size" in fails(sizes, infomap)
    mixed = """{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30],
                              {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}"""
    assert "Expecting object but got list" in fails(mixed, infomap)
    listed = '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}'
    assert "Expecting value/list but got object" in fails(listed, {"str_tensor": T.DT_STRING})


def examples(body: str) -> tuple[str, input_pb2.Input]:
    return examples_input(parse(body.encode()))


def features(example) -> dict[str, tuple[str, list]]:
    return {
        name: (feature.WhichOneof("kind"), list(getattr(feature, feature.WhichOneof("kind")).value))
        for name, feature in example.features.feature.items()
    }


def test_classify_regress_request_no_context():
    signature, given = examples(
        """{"examples": [{"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
                         {"names": [ "baz" ], "ratings": 6.0}]}"""
    )
    assert signature == "" and given.WhichOneof("kind") == "example_list"
    first, second = given.example_list.examples
    assert features(first) == {
        "names": ("bytes_list", [b"foo", b"bar"]),
        "ratings": ("float_list", [8.0, 9.0]),
        "age": ("int64_list", [20]),
    }
    assert features(second) == {"names": ("bytes_list", [b"baz"]), "ratings": ("float_list", [6.0])}


def test_classify_regress_request_with_context_and_signature():
    signature, given = examples(
        """{"signature_name": "custom_signture",
            "context": {"query": "pizza", "location": [ "sfo" ]},
            "examples": [
              {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20},
              {"names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0, "intboolmix": [ 1, true, false ]},
              {"names": "bar", "ratings": -Infinity}]}"""
    )
    assert signature == "custom_signture" and given.WhichOneof("kind") == "example_list_with_context"
    listed = given.example_list_with_context
    assert features(listed.context) == {"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"])}
    first, second, third = listed.examples
    kind, ratings = features(first)["ratings"]
    assert kind == "float_list" and ratings[:2] == [8.0, 9.0] and math.isnan(ratings[2]) and ratings[3] == math.inf
    assert features(second) == {
        "names": ("bytes_list", [b"baz", b"hello"]),
        "ratings": ("float_list", [6.0]),
        "intboolmix": ("int64_list", [1, 1, 0]),
    }
    assert features(third) == {"names": ("bytes_list", [b"bar"]), "ratings": ("float_list", [-math.inf])}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            '{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}',
            "'signature_name' key must be a string",
        ),
        ('{"context": [ { "names": [ "foo", "bar" ] } ]}', "Example must be JSON object"),
        ('{"examples": { "names": [ "foo", "bar" ] }}', "list/array"),
        ('{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}', "Example must be JSON object"),
        ('{"examples": [ { "names": [ 10, null ] } ]}', "names has element with unexpected JSON type: Null"),
        ('{"examples": [ { "names": [ 10, 10.0 ] } ]}', "feature: names expecting type: int64"),
        (
            '{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}',
            "names has element with unexpected JSON type: Object",
        ),
        ('{"examples": [ { "names": [ [10], 20 ] } ]}', "names has element with unexpected JSON type: Array"),
        ('{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}', "Only int64_t is supported"),
        ('{"signature_name": "x"}', "When method is classify, key 'examples' is expected and was not found"),
        ('{"examples": []}', "'examples' value is an empty array"),
    ],
)
def test_classify_regress_json_errors(body, words):
    with pytest.raises(ServingStatus) as caught:
        examples(body)
    assert caught.value.status == INVALID and words in caught.value.message


# -- every dtype, both ways ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [
        (T.DT_FLOAT, [0.1, -2.5, 3], np.float32),
        (T.DT_DOUBLE, [0.1, -2.5, 3], np.float64),
        (T.DT_INT32, [-(2**31), 2**31 - 1], np.int32),
        (T.DT_INT16, [1, -2], np.int16),
        (T.DT_INT8, [1, -2], np.int8),
        (T.DT_UINT8, [0, 255], np.uint8),
        (T.DT_INT64, [-(2**63), 2**63 - 1], np.int64),
        (T.DT_UINT32, [0, 2**32 - 1], np.uint32),
        (T.DT_UINT64, [0, 2**64 - 1], np.uint64),
        (T.DT_BOOL, [True, False], np.bool_),
    ],
)
def test_each_dtype_round_trips(datatype, values, dtype):
    body = json.dumps({"inputs": values}).encode()
    array = predict(body, {"x": datatype}).inputs["x"]
    same(array, values, dtype)
    back = json.loads(predict_response({"x": array}, PredictFormat.COLUMNAR))["outputs"]
    same(np.array(back, dtype=dtype), values, dtype)


def test_narrow_integers_wrap_as_cpp_casts_them():
    # int_val is int32; Tensor::FromProto casts each to int8 or uint8 as C++ does.
    same(predict('{"inputs": [1, 300, -129]}', {"x": T.DT_INT8}).inputs["x"], [1, 44, 127], np.int8)
    same(predict('{"inputs": [256, -1]}', {"x": T.DT_UINT8}).inputs["x"], [0, 255], np.uint8)


@pytest.mark.parametrize(
    ("datatype", "value", "type_name"),
    [
        (T.DT_INT32, "1.0", "int32"),
        (T.DT_INT32, "true", "int32"),
        (T.DT_INT32, "2147483648", "int32"),
        (T.DT_INT64, "9223372036854775808", "int64"),
        (T.DT_UINT32, "-1", "uint32"),
        (T.DT_UINT64, "18446744073709551616", "uint64"),
        (T.DT_BOOL, "1", "bool"),
        (T.DT_STRING, "1", "string"),
        (T.DT_FLOAT, '"1"', "float"),
        (T.DT_FLOAT, '{"b64": "AA=="}', "float"),
    ],
)
def test_values_of_another_type_are_refused(datatype, value, type_name):
    message = fails(f'{{"inputs": [{value}]}}', {"x": datatype})
    assert message.endswith(f"is not of expected type: {type_name}"), message


def test_dtypes_json_has_no_mapping_for_are_unimplemented():
    message = fails('{"inputs": [1]}', {"x": T.DT_HALF}, grpc.StatusCode.UNIMPLEMENTED)
    assert message == "Conversion of JSON Value: 1 to type: half"
    # In rows, the element's error is wrapped, and the wrapper is INVALID_ARGUMENT.
    message = fails('{"instances": [1]}', {"x": T.DT_HALF})
    assert message == (
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1 to type: "
        "half"
    )
    assert predict('{"inputs": [[]]}', {"x": T.DT_HALF}).inputs["x"].shape == (1, 0)  # nothing to convert


def test_row_and_column_messages_are_tf_servings():
    infomap = {"a": T.DT_FLOAT, "b": T.DT_FLOAT}
    assert fails('{"instances": [1]}', infomap).startswith("instances is a plain list, but expecting list of objects")
    assert fails('{"inputs": [1]}', infomap).startswith("inputs is a plain value/list, but expecting an object")
    assert fails('{"inputs": {"a": [1]}}', infomap) == "Missing named input: b in 'inputs' object."
    assert fails('{"instances": [{"a": 1, "c": 2}]}', infomap) == (
        "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
        "have named input: c"
    )
    assert fails('{"instances": [{"a": 1}]}', infomap) == (
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"
    )
    assert (
        fails('{"instances": []}', infomap) == "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"
    )
    assert fails('{"instances": 3}', infomap).endswith("Expecting 'instances' to be an list/array")
    assert fails('{"signature_name": "s"}', infomap) == "Missing 'inputs' or 'instances' key"
    assert fails("[1]", infomap) == "JSON Value: [1] Is not object"
    assert fails('{"inputs": [[1], [1, 2]]}', {"x": T.DT_FLOAT}) == (
        "Encountered list at unexpected size: 2 at level: 1 expected size: 1"
    )
    assert fails('{"inputs": [[1], 2]}', {"x": T.DT_FLOAT}) == (
        "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    )
    assert fails('{"inputs": [1, [2]]}', {"x": T.DT_FLOAT}) == "Encountered list at unexpected level: 1 expected < 1"
    assert fails('{"inputs": {"b64": "!!"}}', {"x": T.DT_STRING}) == "Unable to base64 decode"
    assert fails('{"inputs": [{"b64": 1}]}', {"x": T.DT_STRING}) == (
        'JSON Value: {\n    "b64": 1\n} not formatted correctly for base64 data'
    )
    with pytest.raises(ServingStatus, match="Failed to get input map for signature: DEFAULT"):
        predict('{"inputs": [1]}', {})


def test_big_tensors_take_the_fast_path_and_agree_with_the_walk():
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(2, 64, 64, 3)).tolist()
    fast = predict(json.dumps({"instances": image}), {"x": T.DT_UINT8}).inputs["x"]
    walked: list = []
    tfserving_requests._fill(
        image, T.DT_UINT8, (2, 64, 64, 3), walked
    )  # the walk alone (the fast path turns down a list)
    same(fast, np.array(walked, dtype=np.int32).astype(np.uint8).reshape(2, 64, 64, 3), np.uint8)
    # One bad value among thousands is found, and named, as the walk finds it.
    image[1][63][63][2] = 1.5
    assert "JSON Value: 1.5 Type: Number is not of expected type: uint8" in fails(
        json.dumps({"inputs": image}), {"x": T.DT_UINT8}
    )
