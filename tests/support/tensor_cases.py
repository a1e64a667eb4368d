"""Tensors for codec tests: arrays of every dtype TF Serving carries, protos written as TensorFlow writes them.

The TensorProto messages are TensorFlow's own (``tensorflow.core.framework``): the reference the
gateway's codec is checked against.
"""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2

from app.serving import tensors
from app.serving.tensors import DTYPES

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NUMERIC_ROWS = [row for row in DTYPES if row.datatype != types_pb2.DT_STRING]
STRING_ROW = next(row for row in DTYPES if row.datatype == types_pb2.DT_STRING)
ALL_VAL_FIELDS = sorted({row.field for row in DTYPES})
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)


def _id(row: tensors.DtypeRow) -> str:
    return types_pb2.DataType.Name(row.datatype)


def elements(row: tensors.DtypeRow) -> st.SearchStrategy | None:
    """Elements for arrays of ``row``'s dtype: None (hypothesis' default, NaN and inf included) or bytes."""
    return st.binary(max_size=8) if row is STRING_ROW else None


def arrays(row: tensors.DtypeRow, shape: st.SearchStrategy | tuple[int, ...] = SHAPES) -> st.SearchStrategy:
    return hnp.arrays(row.dtype, shape, elements=elements(row))


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and values; NaN equals NaN."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def make_proto(datatype: int, shape: tuple[int, ...], **fields: object) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=datatype, **fields)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


def put_values(proto: tensor_pb2.TensorProto, row: tensors.DtypeRow, values: np.ndarray) -> None:
    """Write ``values`` into the row's ``*_val`` field the way TF does (half_val holds bit patterns)."""
    field = getattr(proto, row.field)
    if row.datatype == types_pb2.DT_HALF:
        field.extend(values.view("<u2").astype(np.int32).tolist())
    else:
        field.extend(values.tolist())


def padded(values: np.ndarray, row: tensors.DtypeRow, shape: tuple[int, ...]) -> np.ndarray:
    """TF's rule for a short value list, written out independently: zeros, or repeat the last value."""
    count = math.prod(shape)
    if len(values) == 0:
        return np.full(shape, b"" if row is STRING_ROW else 0, dtype=row.dtype)
    tail = np.repeat(values[-1:], count - len(values))
    return np.concatenate([values, tail]).astype(row.dtype).reshape(shape)


def sample_values(row: tensors.DtypeRow, count: int) -> np.ndarray:
    """``count`` distinct-ish values of ``row``'s dtype, extremes included."""
    if row is STRING_ROW:
        pool = [b"first", "sëcond".encode(), b"nul\x00", b"", b"last"]
        out = np.empty(count, dtype=object)
        out[:] = (pool * 2)[:count]
        return out
    if row.dtype.kind == "b":
        return np.array([True, False, True, True, False, True][:count])
    if row.dtype.kind == "f":
        info = np.finfo(row.dtype)
        pool = [1.5, -0.0, info.max, np.nan, -np.inf, info.tiny]
    else:
        info = np.iinfo(row.dtype)
        pool = [1, info.max, info.min, 0, info.max - 1, 7]
    return np.array(pool[:count], dtype=row.dtype)
