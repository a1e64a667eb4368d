"""TF Serving's REST answers written: predict outputs, classification and regression results, as JSON text.

- :func:`predict_response`: MakeJsonFromTensors, ``{"predictions": ...}`` (row) or ``{"outputs": ...}``
  (columnar), as the request was laid out;
- :func:`classification_json`, :func:`regression_json`: the ``{"results": ...}`` of classify and regress.

Floats are written as TF Serving writes them (``app.protocols.tfserving_writer.write_decimal``), strings
of ``*_bytes`` outputs as ``{"b64": ...}``, and ``<``, ``>`` and ``&`` escaped as in every JSON answer of
the gateway. Every error is a :class:`app.errors.ServingStatus` with TF Serving's code and message.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from app.protocols.json_text import html_safe
from app.protocols.tfserving_reader import invalid_argument
from app.protocols.tfserving_requests import PredictFormat
from app.protocols.tfserving_writer import write_decimal
from app.serving.protos.tensorflow_serving.apis import classification_pb2, regression_pb2

__all__ = ["BYTES_SUFFIX", "classification_json", "predict_response", "regression_json"]

BYTES_SUFFIX = "_bytes"  # outputs named so are binary: written as {"b64": ...}


def _string_token(item: bytes | str, as_bytes: bool) -> str:
    if isinstance(item, str):
        item = item.encode("utf-8", "surrogateescape")
    if as_bytes:
        return '{"b64": "' + base64.b64encode(item).decode("ascii") + '"}'
    # TF Serving writes the bytes as they are; bytes that are not UTF-8 would not be JSON, so they are replaced.
    return _safe_json(item.decode("utf-8", "replace"))


def _safe_json(text: str) -> str:
    """A JSON string with ``<``, ``>`` and ``&`` escaped, as every JSON answer of the gateway has them."""
    return html_safe(json.dumps(text))


def _tokens(name: str, value: np.ndarray) -> list[str]:
    """AddSingleValueAndAdvance for every element of one output, in C order."""
    kind = value.dtype
    if value.size == 0:
        return []
    if kind == np.float32 or kind == np.float64:
        return write_decimal(value)
    if kind.kind in "iu" and kind in (np.int8, np.int16, np.int32, np.uint8, np.int64, np.uint32, np.uint64):
        return [str(number) for number in value.ravel().tolist()]
    if kind == np.bool_:
        return ["true" if item else "false" for item in value.ravel().tolist()]
    if kind.kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return [_string_token(item, as_bytes) for item in value.ravel().tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {_numpy_type_string(kind)}")


def _numpy_type_string(dtype: np.dtype) -> str:
    return {"float16": "half"}.get(dtype.name, dtype.name)


def _nest(tokens: list[str], shape: Sequence[int]) -> str:
    """The JSON text of a tensor of ``shape`` whose elements' texts are ``tokens`` (C order)."""
    if not shape:
        return tokens[0]
    if math.prod(shape) == 0:
        zero = list(shape).index(0)
        inner = "[]"
        for size in reversed(shape[:zero]):
            inner = "[" + ", ".join([inner] * size) + "]"
        return inner
    level = tokens
    for size in reversed(shape):
        level = ["[" + ", ".join(level[i : i + size]) + "]" for i in range(0, len(level), size)]
    return level[0]


def predict_response(outputs: Mapping[str, np.ndarray], response_format: PredictFormat) -> str:
    """MakeJsonFromTensors: ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar), as JSON text."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if response_format is PredictFormat.COLUMNAR:
        texts = {name: _nest(_tokens(name, outputs[name]), outputs[name].shape) for name in names}
        if len(names) == 1:
            return '{"outputs": ' + texts[names[0]] + "}"
        members = ", ".join(f"{_safe_json(name)}: {texts[name]}" for name in names)
        return '{"outputs": {' + members + "}}"
    batch = -1
    for name in names:
        value = outputs[name]
        if value.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and value.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} expecting: {batch}"
            )
        batch = value.shape[0]
    rows: dict[str, list[str]] = {}
    for name in names:
        value = outputs[name]
        tokens = _tokens(name, value)
        per_item = math.prod(value.shape[1:])
        rows[name] = [_nest(tokens[i * per_item : (i + 1) * per_item], value.shape[1:]) for i in range(batch)]
    if len(names) == 1:
        items = rows[names[0]]
    else:
        items = ["{" + ", ".join(f"{_safe_json(name)}: {rows[name][i]}" for name in names) + "}" for i in range(batch)]
    return '{"predictions": [' + ", ".join(items) + "]}"


def classification_json(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult: ``{"results": [[[label, score], ...], ...]}``."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        classes = list(classifications.classes)
        scores = write_decimal(np.array([item.score for item in classes], dtype=np.float32))
        pairs = (f"[{_string_token(item.label, False)}, {score}]" for item, score in zip(classes, scores, strict=True))
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult: ``{"results": [value, ...]}``."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = write_decimal(np.array([item.value for item in result.regressions], dtype=np.float32))
    return '{"results": [' + ", ".join(values) + "]}"
