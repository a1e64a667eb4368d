"""TF Serving's REST JSON codec: the cases of json_tensor_test.cc (tag 2.20.0), with the same expectations, and more.

Each test named after a case of that file checks what it checks (the tensors made, the JSON written, the
error's code and words); the rest cover what the gateway adds: RapidJSON's parse errors and offsets,
every dtype both ways, and the fast paths agreeing with the slow ones.
"""

from __future__ import annotations

import json
import math
import time
import tracemalloc

import grpc
import numpy as np
import pytest

from app.errors import ServingStatus
from app.protocols import tfserving_json as jt
from app.protocols.tfserving_json import JsonObject, PredictFormat
from app.serving.protos.tensorflow.core.framework import types_pb2 as T
from app.serving.protos.tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def predict(body: str | bytes, infomap: dict[str, int]) -> jt.PredictRequest:
    """FillPredictRequestFromJson with the test's getmap(infomap)."""
    data = body.encode() if isinstance(body, str) else body
    return jt.predict_request(jt.parse(data), lambda _signature: infomap)


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


TOO_DEEP = (
    f"JSON Parse error: The document nests arrays and objects deeper than {jt.MAX_DEPTH} levels; a tensor has at "
    "most 64 dimensions. at offset: "
)


def test_deeply_nested_well_formed():
    # A key nothing reads, nested half a million deep: RapidJSON's iterative parser takes it, and TF Serving with
    # it. The gateway does not: every level costs memory before anything reads it. It stops where the nesting goes
    # deeper than a request of a tensor of 64 dimensions needs (67 levels).
    prefix = '{"instances":[1], "nested":'
    body = prefix + "[" * 500_000 + "]" * 500_000 + "}"
    assert fails(body, {"default": T.DT_INT32}) == f"{TOO_DEEP}{len(prefix) + jt.MAX_DEPTH - 1}"
    within = prefix + "[" * (jt.MAX_DEPTH - 1) + "]" * (jt.MAX_DEPTH - 1) + "}"  # the document's object is a level
    assert list(predict(within, {"default": T.DT_INT32}).inputs) == ["default"]


def test_deeply_nested_malformed():
    # TF Serving: "'signature_name' key must be a string value"; the gateway stops at the nesting first.
    prefix = '{"signature_name":'
    body = prefix + "[" * 500_000 + "]" * 500_000 + "}"
    assert fails(body, {"default": T.DT_INT32}) == f"{TOO_DEEP}{len(prefix) + jt.MAX_DEPTH - 1}"
    within = prefix + "[" * (jt.MAX_DEPTH - 1) + "]" * (jt.MAX_DEPTH - 1) + "}"
    assert "key must be a string value" in fails(within, {"default": T.DT_INT32})


@pytest.mark.parametrize("body", [b"[" * 4_000_000, b'{"a":' * 800_000, b"[" * 3_000_000 + b"\x00"])
def test_deep_nesting_is_refused_in_bounded_time_and_memory(body):
    """4 MB of "[" took 550 MB and 7 s of CPU before the depth was bounded; now about the body's size, at once."""
    tracemalloc.start()
    started = time.process_time()
    try:
        with pytest.raises(ServingStatus) as caught:
            jt.parse(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.message.startswith(TOO_DEEP)
    assert peak < 8 * len(body), peak
    assert time.process_time() - started < 2  # CPU seconds, a generous bound: the unbounded parse took 7 s


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100 + b"]" * 100,  # Python's reader reads it; the depth is checked after
        b"[" * 2000 + b"]" * 2000,  # deeper than Python recurses: the port reads it
        b"[" * 100,  # malformed past the limit: the limit is met first
        b'{"a": "[[[[[[[[", "b": ' + b"[" * 66 + b"]" * 66 + b"}",  # brackets in a string are not nesting
        b'{"a": "x\\\\", "b": ' + b"[" * 67 + b"]" * 67 + b"}",  # a string ending in backslashes
        b'{"a": "]]]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}",
        b'{"a": "\\"]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}",  # an escaped quote does not end a string
        b'{"a": "\\\\\\"]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}",  # an escaped backslash, an escaped quote
        b"[1] " + b"[" * 100,  # what follows the first value is not read
        b'[{"b64": "x"}, ' + b"[" * 65 + b"{}" + b"]" * 65 + b"]",
    ],
)
def test_the_fast_reader_and_the_port_stop_at_the_same_depth(body):
    def outcome(read):
        try:
            return repr(read(body))
        except ServingStatus as exc:
            return exc.message

    fast, port = outcome(jt.parse), outcome(lambda data: jt._Port(data).parse())
    assert fast == port


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


# -- answers: json_tensor_test.cc ------------------------------------------------------------------------------


def json_equal(text: str, expected: str) -> None:
    """CompareJson: the same document, numbers compared as numbers (NaN equal to NaN)."""
    assert _canonical(json.loads(text)) == _canonical(json.loads(expected)), text


def _canonical(value):
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def as_strings(text: str) -> object:
    """CompareJsonAllValuesAsStrings: the numbers as they are written."""
    return json.loads(text, parse_float=str, parse_int=str, parse_constant=str)


INT_TENSOR = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], dtype=np.int32)


def test_from_json_single_tensor():
    rows = jt.predict_response({"int_tensor": INT_TENSOR}, PredictFormat.ROW)
    json_equal(rows, '{"predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')
    columns = jt.predict_response({"int_tensor": INT_TENSOR}, PredictFormat.COLUMNAR)
    json_equal(columns, '{"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')


def test_from_json_single_scalar_tensor():
    vector = {"int_tensor": np.array([1, 2, 3, 4, 5], dtype=np.int32)}
    json_equal(jt.predict_response(vector, PredictFormat.ROW), '{"predictions": [1, 2, 3, 4, 5]}')
    json_equal(jt.predict_response(vector, PredictFormat.COLUMNAR), '{"outputs": [1, 2, 3, 4, 5]}')


def test_from_json_single_bytes_tensor():
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    json_equal(
        jt.predict_response({"str_tensor_bytes": strings}, PredictFormat.ROW),
        '{"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}',
    )


def test_from_json_single_float_tensor_six_digit_precision():
    floats = np.array([[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]], dtype=np.float32)
    written = as_strings(jt.predict_response({"float_tensor": floats}, PredictFormat.ROW))
    assert written == {"predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]}


def test_from_json_single_float_tensor_non_finite():
    floats = np.array([[np.nan, np.inf], [3, -np.inf]], dtype=np.float32)
    written = as_strings(jt.predict_response({"float_tensor": floats}, PredictFormat.ROW))
    assert written == {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}


def test_from_json_single_tensor_errors():
    with pytest.raises(ServingStatus, match="empty tensor map"):
        jt.predict_response({}, PredictFormat.ROW)
    with pytest.raises(ServingStatus, match="tensor type: complex64"):
        jt.predict_response({"tensor": np.array([1, 2], dtype=np.complex64)}, PredictFormat.ROW)
    with pytest.raises(ServingStatus, match="no shape information"):
        jt.predict_response({"tensor": np.array(1, dtype=np.int32)}, PredictFormat.ROW)


MULTIPLE = {
    "int_tensor": INT_TENSOR,
    "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
    "float_tensor": np.array([[1.0], [2.0]], dtype=np.float32),
    "double_scalar_tensor": np.array([8.0, 9.0], dtype=np.float64),
    "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object),
}


def test_from_json_multiple_named_tensors():
    json_equal(
        jt.predict_response(MULTIPLE, PredictFormat.ROW),
        """{"predictions": [
            {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
             "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
            {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
             "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}""",
    )
    json_equal(
        jt.predict_response(MULTIPLE, PredictFormat.COLUMNAR),
        """{"outputs": {
            "double_scalar_tensor": [8.0, 9.0], "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
        }}""",
    )


def test_from_json_multiple_named_tensors_errors():
    tensors = {
        "int_tensor": np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32),
        "str_tensor": np.array([[b"foo", b"bar", b"baz"]], dtype=object),
    }
    with pytest.raises(ServingStatus, match="inconsistent batch size"):
        jt.predict_response(tensors, PredictFormat.ROW)


def test_from_json_single_zero_batch_tensor():
    json_equal(
        jt.predict_response({"int_tensor": np.zeros((0, 2), np.int32)}, PredictFormat.ROW), '{"predictions": []}'
    )


def test_from_json_multiple_zero_batch_tensors():
    tensors = {"str_tensor": np.zeros((0, 1, 2), dtype=object), "float_tensor": np.zeros((0, 3, 4), np.float32)}
    json_equal(jt.predict_response(tensors, PredictFormat.ROW), '{"predictions": []}')


def test_from_json_multiple_zero_batch_tensors_errors():
    tensors = {"int_tensor": np.zeros((0, 2), np.int32), "str_tensor": np.array([[b"foo", b"bar"]], dtype=object)}
    with pytest.raises(ServingStatus, match="inconsistent batch size"):
        jt.predict_response(tensors, PredictFormat.ROW)


def examples(body: str) -> tuple[str, input_pb2.Input]:
    return jt.examples_input(jt.parse(body.encode()))


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


def test_json_from_classification_result():
    result = classification_pb2.ClassificationResult()
    for row in ((("car", 0.2), ("bike", 0.7), ("bus", 0.1)), (("car", 0.7), ("bike", 0.1), ("bus", 0.2))):
        entry = result.classifications.add()
        for label, score in row:
            entry.classes.add(label=label, score=score)
    json_equal(
        jt.classification_json(result),
        '{"results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]}',
    )


def test_json_from_regression_result():
    result = regression_pb2.RegressionResult()
    for value in (0.2, 0.9, 1.0):
        result.regressions.add(value=value)
    json_equal(jt.regression_json(result), '{"results": [0.2, 0.9, 1.0]}')


def test_json_from_regression_result_with_non_finite():
    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    written = as_strings(jt.regression_json(result))
    assert written == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}


def test_json_from_result_errors():
    with pytest.raises(ServingStatus, match="empty ClassificationResults"):
        jt.classification_json(classification_pb2.ClassificationResult())
    with pytest.raises(ServingStatus, match="empty RegressionResults"):
        jt.regression_json(regression_pb2.RegressionResult())


# -- what TF Serving's parser (RapidJSON 1.1.0) says, byte for byte ------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"  \n", "JSON Parse error: The document is empty. at offset: 3"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
        (b'{"a": [1,2,]}', "JSON Parse error: Invalid value. at offset: 11"),
        (b'{"a":1,}', "JSON Parse error: Missing a name for object member. at offset: 7"),
        (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        (b'{"a":1 "b"}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 7"),
        (b"[1 2]", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 3"),
        (b'"\\ud800x"', "JSON Parse error: The surrogate pair in string is invalid. at offset: 1"),
        (b'"\\u12g4"', "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 1"),
        (b'"\\x"', "JSON Parse error: Invalid escape character in string. at offset: 1"),
        (b'"abc', "JSON Parse error: Missing a closing quotation mark in string. at offset: 4"),
        (b'["a\nb"]', "JSON Parse error: Invalid escape character in string. at offset: 3"),
        (b"[1e400]", "JSON Parse error: Number too big to be stored in double. at offset: 1"),
        (b"[1.]", "JSON Parse error: Miss fraction part in number. at offset: 3"),
        (b"[1e+]", "JSON Parse error: Miss exponent in number. at offset: 4"),
        (b"[-]", "JSON Parse error: Invalid value. at offset: 2"),
        (b"[nul]", "JSON Parse error: Invalid value. at offset: 4"),
        (b"[Infinit]", "JSON Parse error: Invalid value. at offset: 8"),
        (b"\xef\xbb\xbf{}", "JSON Parse error: Invalid value. at offset: 0"),
        (b"[1, 2", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 5"),
    ],
)
def test_parse_errors_are_rapidjsons(body, message):
    with pytest.raises(ServingStatus) as caught:
        jt.parse(body)
    assert (caught.value.status, caught.value.message) == (INVALID, message)


def test_parse_reads_what_rapidjson_reads():
    assert jt.parse(b'{"a":1} and then anything') == JsonObject([("a", 1)])  # kParseStopWhenDoneFlag
    assert jt.parse(b"[1,2]\x00[3]") == [1, 2]  # the stream ends at a NUL byte
    values = jt.parse(b"[NaN, Inf, Infinity, -Inf, -Infinity, -NaN]")
    assert math.isnan(values[0]) and values[1:5] == [math.inf, math.inf, -math.inf, -math.inf] and math.isnan(values[5])
    assert jt.parse(b'{"a": 1, "a": 2}').members == [("a", 1), ("a", 2)]  # duplicates kept, the first one found
    assert jt.parse(b'{"a": 1, "a": 2}').find("a") == 1
    assert jt.parse(b"[18446744073709551615, 18446744073709551616]") == [2**64 - 1, float(2**64)]
    assert jt.parse(b'["\xff\xfe"]')[0].encode("utf-8", "surrogateescape") == b"\xff\xfe"  # bytes kept as sent
    assert jt.parse(b'["\\udc80"]')[0].encode("utf-8", "surrogateescape") == b"\xed\xb2\x80"  # a lone low surrogate
    assert jt.parse(b'["\\ud83d\\ude00"]') == ["😀"]
    assert jt.parse(b"  [1e-400, 1E+99]") == [0.0, 1e99]


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[1, 2.5, -3e-05], [NaN, true, null]], "b": {"c": ["x\\u00e9", {}]}}',
        b'[1, "two", 3.0, [4, [5, {"six": 6}]]]',
        b'{"x": 18446744073709551616, "y": -1e+300}',
    ],
)
def test_the_fast_reader_and_the_port_agree(body):
    fast, port = jt.parse(body), jt._Port(body).parse()
    assert repr(fast) == repr(port)


def test_debug_strings_are_rapidjsons_pretty_writer():
    doc = jt.parse(b'{"instances": [[1,2],[3,4.5]], "s": "x\\ny", "o": {}, "e": [], "n": null, "f": 1e30, "g": 1e-7}')
    assert jt.debug_string(doc) == (
        '{\n    "instances": [[1, 2], [3, 4.5]],\n    "s": "x\\ny",\n    "o": {},\n    "e": [],\n    "n": null,\n'
        '    "f": 1e30,\n    "g": 1e-7\n}'
    )
    assert jt.debug_string(jt.parse(b"[1.0, NaN, 2]")) == "[1.0, "  # RapidJSON's writer stops at NaN
    long = jt.debug_string(jt.parse(b"[" + b"1234567, " * 100 + b"1]"))
    assert long.startswith("[1234567, ") and 256 <= len(long) < 256 + 10


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
    back = json.loads(jt.predict_response({"x": array}, PredictFormat.COLUMNAR))["outputs"]
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
    jt._fill(image, T.DT_UINT8, (2, 64, 64, 3), walked)  # the walk alone (the fast path turns down a list)
    same(fast, np.array(walked, dtype=np.int32).astype(np.uint8).reshape(2, 64, 64, 3), np.uint8)
    # One bad value among thousands is found, and named, as the walk finds it.
    image[1][63][63][2] = 1.5
    assert "JSON Value: 1.5 Type: Number is not of expected type: uint8" in fails(
        json.dumps({"inputs": image}), {"x": T.DT_UINT8}
    )


def test_floats_are_written_as_tf_serving_writes_them():
    texts = jt.write_decimal(np.array([1 / 3, 0.1, 2.0, -0.0, 1e-45, 3.4028235e38], dtype=np.float32))
    assert texts == ["0.333333343", "0.1", "2.0", "-0.0", "1.4013e-45", "3.40282347e+38"]
    assert jt.write_decimal(np.array([1 / 3, 0.1], dtype=np.float64)) == ["0.33333333333333331", "0.1"]
    # Whatever the text, a client reads back the very same value.
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert np.array_equal(np.array([float(text) for text in jt.write_decimal(values)], dtype=np.float32), values)


def test_a_large_body_the_exact_parser_would_read_slowly_is_refused_at_once(monkeypatch):
    """Bodies Python's parser reads otherwise than RapidJSON go to the exact (slow) reader: it stops at its budget
    (EXACT_PARSE_MAX_BYTES) rather than read the whole body."""
    from app.errors import ServingStatus
    from app.protocols import tfserving_json as json_tensors

    assert json_tensors.EXACT_PARSE_MAX_BYTES == 2 * 1024 * 1024  # what docs/rest-api.md says
    reached = []
    port = json_tensors._Port

    class WatchedPort(port):
        def parse(self):
            try:
                return super().parse()
            finally:
                reached.append(self.pos)

    monkeypatch.setattr(json_tensors, "_Port", WatchedPort)
    body = b'{"instances": [' + b",".join([b"1e100"] * 500_000) + b"]}"  # 3-digit exponents: the exact reader
    assert len(body) > json_tensors.EXACT_PARSE_MAX_BYTES
    with pytest.raises(ServingStatus, match="must be well-formed UTF-8 JSON without NUL bytes"):
        json_tensors.parse(body)
    assert json_tensors.EXACT_PARSE_MAX_BYTES <= reached[-1] < json_tensors.EXACT_PARSE_MAX_BYTES + 64
    small = b'{"instances": [' + b",".join([b"1e100"] * 1_000) + b"]}"
    assert json_tensors.parse(small) is not None  # a small one is read exactly, as before
    assert reached[-1] == len(small)
