"""Which JSON values each TF dtype takes in TF Serving's REST requests, and the array they become.

AddValueToTensor of util/json_tensor.cc as a table (:data:`CONVERSIONS`): the JSON values a dtype takes
(a float tensor takes any number; an int32 one only integers that fit 32 bits; a string one strings, or
``{"b64": ...}`` objects decoded by :func:`decode_base64`), the numpy array they make, and
:func:`type_error`, TF Serving's message for a value its dtype does not take.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import ServingStatus
from app.protocols.tfserving_reader import JsonObject, invalid_argument
from app.protocols.tfserving_writer import debug_string, json_type
from app.serving.protos.tensorflow.core.framework import types_pb2

__all__ = [
    "BASE64_KEY",
    "CONVERSIONS",
    "INT64",
    "Conversion",
    "data_type_string",
    "decode_base64",
    "is_base64_object",
    "type_error",
    "values_array",
]

BASE64_KEY = "b64"
_INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def data_type_string(datatype: int) -> str:
    """DataTypeString: "float", "int32", "string", "half", ... for a TF DataType enum value."""
    try:
        name = types_pb2.DataType.Name(datatype)
    except ValueError:
        return f"unknown dtype enum ({datatype})"
    if name == "DT_INVALID":
        return "INVALID"
    return name.removeprefix("DT_").lower()


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return type(value) is int and low <= value <= high

    return check


def _integers(dtype: type, low: int, high: int, via: type | None = None) -> Conversion:
    return Conversion(
        _int_in(low, high), np.dtype(dtype), None if via is None else np.dtype(via), frozenset({int}), (low, high)
    )


@dataclass(frozen=True)
class Conversion:
    """AddValueToTensor for one dtype: which JSON values it takes, and the array they become."""

    accepts: Callable[[Any], bool]
    dtype: np.dtype
    via: np.dtype | None = None  # the wire type in between (int_val is int32, GetFloat goes through double)
    kinds: frozenset[type] = frozenset()  # the Python types of the values it takes (bounds aside)
    bounds: tuple[int, int] | None = None


_NUMBERS = frozenset({int, float})
CONVERSIONS: dict[int, Conversion] = {
    types_pb2.DT_FLOAT: Conversion(_is_number, np.dtype(np.float32), np.dtype(np.float64), _NUMBERS),
    types_pb2.DT_DOUBLE: Conversion(_is_number, np.dtype(np.float64), None, _NUMBERS),
    # IsInt(): a 32-bit integer, then int_val; Tensor::FromProto casts it to 8 or 16 bits as C++ does (wrapping).
    types_pb2.DT_INT32: _integers(np.int32, *_INT32),
    types_pb2.DT_INT16: _integers(np.int16, *_INT32, via=np.int32),
    types_pb2.DT_INT8: _integers(np.int8, *_INT32, via=np.int32),
    types_pb2.DT_UINT8: _integers(np.uint8, *_INT32, via=np.int32),
    types_pb2.DT_INT64: _integers(np.int64, *INT64),
    types_pb2.DT_UINT32: _integers(np.uint32, 0, _UINT32_MAX),
    types_pb2.DT_UINT64: _integers(np.uint64, 0, _UINT64_MAX),
    types_pb2.DT_BOOL: Conversion(lambda value: type(value) is bool, np.dtype(np.bool_), None, frozenset({bool})),
    types_pb2.DT_STRING: Conversion(lambda value: type(value) is str, np.dtype(object)),
}


def values_array(values: list, conversion: Conversion, shape: tuple[int, ...]) -> np.ndarray:
    if conversion.dtype.kind == "O":
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    with np.errstate(over="ignore"):  # GetFloat() of a double past FLT_MAX is inf, silently
        if conversion.via is not None:
            return np.array(values, dtype=conversion.via).astype(conversion.dtype).reshape(shape)
        return np.array(values, dtype=conversion.dtype).reshape(shape)


def type_error(value: Any, datatype: int) -> ServingStatus:
    return invalid_argument(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: "
        f"{data_type_string(datatype)}"
    )


def is_base64_object(value: Any) -> bool:
    return isinstance(value, JsonObject) and len(value) == 1 and isinstance(value.find(BASE64_KEY), str)


def decode_base64(value: Any) -> bytes:
    """JsonDecodeBase64Object: ``{"b64": "<base64>"}`` (absl's decoder: padding optional, no stray bytes)."""
    if not is_base64_object(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value.find(BASE64_KEY).encode("utf-8", "surrogateescape")
    try:
        return _unbase64(text)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _unbase64(text: bytes) -> bytes:
    stripped = text.rstrip(b"=")
    if len(text) - len(stripped) > 2 or (len(text) % 4 and len(text) != len(stripped)):
        raise ValueError("bad padding")
    if len(stripped) % 4 == 1:
        raise ValueError("bad length")
    return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
