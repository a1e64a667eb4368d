"""TF Serving's REST answers written: the answer cases of json_tensor_test.cc (tag 2.20.0), with the same
expectations (the JSON written, numbers compared as numbers or as the text written, and the errors)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.errors import ServingStatus
from app.protocols.tfserving_answers import classification_json, predict_response, regression_json
from app.protocols.tfserving_requests import PredictFormat
from app.serving.protos.tensorflow_serving.apis import classification_pb2, regression_pb2

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
    rows = predict_response({"int_tensor": INT_TENSOR}, PredictFormat.ROW)
    json_equal(rows, '{"predictions": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')
    columns = predict_response({"int_tensor": INT_TENSOR}, PredictFormat.COLUMNAR)
    json_equal(columns, '{"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]}')


def test_from_json_single_scalar_tensor():
    vector = {"int_tensor": np.array([1, 2, 3, 4, 5], dtype=np.int32)}
    json_equal(predict_response(vector, PredictFormat.ROW), '{"predictions": [1, 2, 3, 4, 5]}')
    json_equal(predict_response(vector, PredictFormat.COLUMNAR), '{"outputs": [1, 2, 3, 4, 5]}')


def test_from_json_single_bytes_tensor():
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    json_equal(
        predict_response({"str_tensor_bytes": strings}, PredictFormat.ROW),
        '{"predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]}',
    )


def test_from_json_single_float_tensor_six_digit_precision():
    floats = np.array([[9000000, 999999, 0.50000], [0.0003, 0.00003, 555557.5]], dtype=np.float32)
    written = as_strings(predict_response({"float_tensor": floats}, PredictFormat.ROW))
    assert written == {"predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]}


def test_from_json_single_float_tensor_non_finite():
    floats = np.array([[np.nan, np.inf], [3, -np.inf]], dtype=np.float32)
    written = as_strings(predict_response({"float_tensor": floats}, PredictFormat.ROW))
    assert written == {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}


def test_from_json_single_tensor_errors():
    with pytest.raises(ServingStatus, match="empty tensor map"):
        predict_response({}, PredictFormat.ROW)
    with pytest.raises(ServingStatus, match="tensor type: complex64"):
        predict_response({"tensor": np.array([1, 2], dtype=np.complex64)}, PredictFormat.ROW)
    with pytest.raises(ServingStatus, match="no shape information"):
        predict_response({"tensor": np.array(1, dtype=np.int32)}, PredictFormat.ROW)


MULTIPLE = {
    "int_tensor": INT_TENSOR,
    "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
    "float_tensor": np.array([[1.0], [2.0]], dtype=np.float32),
    "double_scalar_tensor": np.array([8.0, 9.0], dtype=np.float64),
    "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object),
}


def test_from_json_multiple_named_tensors():
    json_equal(
        predict_response(MULTIPLE, PredictFormat.ROW),
        """{"predictions": [
            {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
             "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
            {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
             "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}]}""",
    )
    json_equal(
        predict_response(MULTIPLE, PredictFormat.COLUMNAR),
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
        predict_response(tensors, PredictFormat.ROW)


def test_from_json_single_zero_batch_tensor():
    json_equal(predict_response({"int_tensor": np.zeros((0, 2), np.int32)}, PredictFormat.ROW), '{"predictions": []}')


def test_from_json_multiple_zero_batch_tensors():
    tensors = {"str_tensor": np.zeros((0, 1, 2), dtype=object), "float_tensor": np.zeros((0, 3, 4), np.float32)}
    json_equal(predict_response(tensors, PredictFormat.ROW), '{"predictions": []}')


def test_from_json_multiple_zero_batch_tensors_errors():
    tensors = {"int_tensor": np.zeros((0, 2), np.int32), "str_tensor": np.array([[b"foo", b"bar"]], dtype=object)}
    with pytest.raises(ServingStatus, match="inconsistent batch size"):
        predict_response(tensors, PredictFormat.ROW)


def test_json_from_classification_result():
    result = classification_pb2.ClassificationResult()
    for row in ((("car", 0.2), ("bike", 0.7), ("bus", 0.1)), (("car", 0.7), ("bike", 0.1), ("bus", 0.2))):
        entry = result.classifications.add()
        for label, score in row:
            entry.classes.add(label=label, score=score)
    json_equal(
        classification_json(result),
        '{"results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], [["car", 0.7], ["bike", 0.1], ["bus", 0.2]]]}',
    )


def test_json_from_regression_result():
    result = regression_pb2.RegressionResult()
    for value in (0.2, 0.9, 1.0):
        result.regressions.add(value=value)
    json_equal(regression_json(result), '{"results": [0.2, 0.9, 1.0]}')


def test_json_from_regression_result_with_non_finite():
    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    written = as_strings(regression_json(result))
    assert written == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}


def test_json_from_result_errors():
    with pytest.raises(ServingStatus, match="empty ClassificationResults"):
        classification_json(classification_pb2.ClassificationResult())
    with pytest.raises(ServingStatus, match="empty RegressionResults"):
        regression_json(regression_pb2.RegressionResult())
