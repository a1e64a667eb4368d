"""Convert numpy arrays to and from TF Serving's ``TensorProto``, for every dtype TF Serving uses.

One table, :data:`DTYPES`, drives both directions. Each row names a TF
``DataType``, the little-endian numpy dtype it maps to, the repeated ``*_val``
field that can carry its values, and the converter that turns that field into a
flat numpy array.

Encoding (:func:`to_tensor_proto`) writes numeric and bool tensors as
``tensor_content`` (raw little-endian bytes, one copy) and strings as
``string_val``. Decoding (:func:`from_tensor_proto`) reads ``tensor_content``
without a further copy and also accepts the ``*_val`` forms, following TF's
rule for short value lists: no values means zeros, and ``k < n`` values fill the
rest of the tensor with the last one (so a single value is broadcast).

The pieces of both directions (:func:`row_of_dtype`, :func:`string_items`,
:func:`checked_shape`, :func:`array_from_parts`) are shared with
``app.serving.wire``, which GrpcBackend uses to write and read whole Predict
messages as raw bytes; so the two routes agree on every tensor and every error.

The messages are ``app.serving.protos``' (no TensorFlow is imported). The decoder
only reads fields, so it takes TensorFlow's own ``TensorProto`` as well; to put an
encoded tensor into a message of TensorFlow's set, pass its bytes
(``ParseFromString(proto.SerializeToString())``), not the message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from app.errors import BadInput
from app.serving.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

__all__ = [
    "DTYPES",
    "MAX_RANK",
    "DtypeRow",
    "array_from_parts",
    "checked_shape",
    "datatype_of",
    "from_tensor_proto",
    "numpy_dtype",
    "row_of_datatype",
    "row_of_dtype",
    "string_items",
    "to_tensor_proto",
]

# The most dimensions a numpy array can have (NPY_MAXDIMS), and so a tensor at the gateway: TF allows 254, but a
# request of more than this could not even be held here. The model surfaces refuse deeper ones as bad input.
MAX_RANK = 64

_TensorProto = tensor_pb2.TensorProto
_Dim = tensor_shape_pb2.TensorShapeProto.Dim
_OBJECT = np.dtype(object)


def _datatype_name(datatype: int) -> str:
    try:
        return types_pb2.DataType.Name(datatype)
    except ValueError:
        return f"DataType {datatype}"


def _values(wire: npt.DTypeLike) -> Callable[[Sequence[Any]], np.ndarray]:
    """A converter for a ``*_val`` field whose wire type already is the tensor's dtype."""
    wire = np.dtype(wire)

    def convert(values: Sequence[Any]) -> np.ndarray:
        return np.array(values, dtype=wire)

    return convert


def _narrow_ints(dtype: npt.DTypeLike) -> Callable[[Sequence[Any]], np.ndarray]:
    """A converter for 8- and 16-bit integers, which travel widened to int32 in ``int_val``."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)

    def convert(values: Sequence[Any]) -> np.ndarray:
        wide = np.array(values, dtype=np.int32)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise BadInput(f"int_val holds a value outside the range of {dtype.name} [{info.min}, {info.max}]")
        return wide.astype(dtype)

    return convert


def _half_bits(values: Sequence[Any]) -> np.ndarray:
    """``half_val`` holds each float16's 16-bit pattern in an int32."""
    bits = np.array(values, dtype=np.int32)
    if bits.size and (bits.min() < 0 or bits.max() > 0xFFFF):
        raise BadInput("half_val holds a value that is not a 16-bit float16 bit pattern")
    return bits.astype("<u2").view("<f2")


def _strings(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=_OBJECT)
    out[:] = list(values)
    return out


class DtypeRow(NamedTuple):
    """One supported dtype: how it is named on each side and where its ``*_val`` values live."""

    datatype: int
    dtype: np.dtype  # little-endian (or byte-sized) numpy dtype; object for DT_STRING
    field: str  # the repeated TensorProto field that carries values when tensor_content is not used
    convert: Callable[[Sequence[Any]], np.ndarray]  # that field's values -> flat array of ``dtype``
    zero: Any  # the value of each element when the field is empty


DTYPES: tuple[DtypeRow, ...] = (
    DtypeRow(types_pb2.DT_HALF, np.dtype("<f2"), "half_val", _half_bits, 0),
    DtypeRow(types_pb2.DT_FLOAT, np.dtype("<f4"), "float_val", _values("<f4"), 0.0),
    DtypeRow(types_pb2.DT_DOUBLE, np.dtype("<f8"), "double_val", _values("<f8"), 0.0),
    DtypeRow(types_pb2.DT_INT8, np.dtype("i1"), "int_val", _narrow_ints("i1"), 0),
    DtypeRow(types_pb2.DT_INT16, np.dtype("<i2"), "int_val", _narrow_ints("<i2"), 0),
    DtypeRow(types_pb2.DT_INT32, np.dtype("<i4"), "int_val", _values("<i4"), 0),
    DtypeRow(types_pb2.DT_INT64, np.dtype("<i8"), "int64_val", _values("<i8"), 0),
    DtypeRow(types_pb2.DT_UINT8, np.dtype("u1"), "int_val", _narrow_ints("u1"), 0),
    DtypeRow(types_pb2.DT_UINT16, np.dtype("<u2"), "int_val", _narrow_ints("<u2"), 0),
    DtypeRow(types_pb2.DT_UINT32, np.dtype("<u4"), "uint32_val", _values("<u4"), 0),
    DtypeRow(types_pb2.DT_UINT64, np.dtype("<u8"), "uint64_val", _values("<u8"), 0),
    DtypeRow(types_pb2.DT_BOOL, np.dtype("?"), "bool_val", _values("?"), False),
    DtypeRow(types_pb2.DT_STRING, _OBJECT, "string_val", _strings, b""),
)

_BY_DATATYPE: dict[int, DtypeRow] = {row.datatype: row for row in DTYPES}
# Keyed by little-endian dtype; np.dtype equality (and hash) ignores aliases such as intc/int32 or q/l.
_BY_DTYPE: dict[np.dtype, DtypeRow] = {row.dtype: row for row in DTYPES}
_STRING_ROW = _BY_DATATYPE[types_pb2.DT_STRING]
_STRING_KINDS = frozenset("OSU")


def row_of_datatype(datatype: int) -> DtypeRow:
    """The table row for a TF ``DataType`` enum value; BadInput for one TF Serving does not use."""
    row = _BY_DATATYPE.get(datatype)
    if row is None:
        raise BadInput(f"unsupported tensor dtype {_datatype_name(datatype)}")
    return row


def numpy_dtype(datatype: int) -> np.dtype:
    """The numpy dtype for a TF ``DataType`` enum value (DT_STRING -> object)."""
    return row_of_datatype(datatype).dtype


def row_of_dtype(dtype: np.dtype) -> DtypeRow:
    """The table row for a numpy dtype (any byte order); object, bytes and str dtypes are DT_STRING."""
    if dtype.kind in _STRING_KINDS:
        return _STRING_ROW
    row = _BY_DTYPE.get(dtype.newbyteorder("<"))
    if row is None:
        raise BadInput(f"unsupported array dtype {dtype} ({dtype.str})")
    return row


def datatype_of(dtype: np.dtype) -> int:
    """The TF ``DataType`` for a numpy dtype; object, bytes and str dtypes are DT_STRING."""
    return row_of_dtype(np.dtype(dtype)).datatype


def _encode_string(item: object) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInput(f"string tensor holds a str that is not valid UTF-8: {exc}") from None
    raise BadInput(f"string tensor holds a {type(item).__name__}; only str and bytes are allowed")


def to_tensor_proto(value: npt.ArrayLike) -> tensor_pb2.TensorProto:
    """Encode an array (or anything ``np.asarray`` takes, scalars included) as a ``TensorProto``.

    Numeric and bool tensors go out as little-endian ``tensor_content``; strings go out
    as ``string_val`` (str encoded as UTF-8, bytes as they are). A scalar has no dims.
    """
    arr = np.asarray(value)
    row = row_of_dtype(arr.dtype)
    proto = _TensorProto(dtype=row.datatype)
    dims = proto.tensor_shape.dim
    for size in arr.shape:
        dims.add(size=size)
    if row is _STRING_ROW:
        proto.string_val.extend(string_items(arr))
    else:
        proto.tensor_content = _content_bytes(arr, row.dtype)
    return proto


def string_items(arr: np.ndarray) -> list[bytes]:
    """A string array's elements in C order as bytes (str encoded as UTF-8); BadInput for anything else."""
    items = arr.ravel().tolist()
    if arr.dtype.kind == "S":
        return items
    return [_encode_string(item) for item in items]


def _content_bytes(arr: np.ndarray, dtype: np.dtype) -> bytes:
    """``arr``'s elements as C-order little-endian bytes, copied at most once."""
    # An array that from_tensor_proto decoded (a view over a whole bytes object, as
    # happens when one model's output feeds the next) already is its own encoding.
    base = arr.base
    while isinstance(base, np.ndarray):
        base = base.base
    if type(base) is bytes and arr.dtype == dtype and arr.flags.c_contiguous and arr.nbytes == len(base):
        return base
    # ascontiguousarray is a no-op when arr already is C-contiguous little-endian; tobytes is the one copy.
    return np.ascontiguousarray(arr, dtype=dtype).tobytes()


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a ``TensorProto`` into a numpy array.

    ``tensor_content`` is wrapped with ``np.frombuffer`` without copying, so the result
    is then **read-only**; call ``.copy()`` to modify it. The ``*_val`` forms give a
    fresh writable array: fewer values than elements are padded TF's way (none -> zeros
    or empty bytes, otherwise the last value repeats). DT_STRING gives an object array
    of bytes.
    """
    row = row_of_datatype(proto.dtype)
    shape_proto = proto.tensor_shape
    shape = checked_shape([dim.size for dim in shape_proto.dim], unknown_rank=shape_proto.unknown_rank)
    return array_from_parts(row, shape, proto.tensor_content, getattr(proto, row.field))


def checked_shape(sizes: Sequence[int], *, unknown_rank: bool = False) -> tuple[int, ...]:
    """A TensorShapeProto's dim sizes as a numpy shape; BadInput for an unknown rank or dimension."""
    if unknown_rank:
        raise BadInput("tensor shape has unknown rank")
    shape = tuple(sizes)
    if any(size < 0 for size in shape):
        raise BadInput(f"tensor shape {list(shape)} has a negative (unknown) dimension")
    return shape


def array_from_parts(
    row: DtypeRow, shape: tuple[int, ...], content: bytes | memoryview, values: Sequence[Any]
) -> np.ndarray:
    """The array a TensorProto holds, from its parts: ``tensor_content`` (wins when not empty) or ``*_val`` values.

    Shared by :func:`from_tensor_proto` and the wire decoder (``app.serving.wire``), so both
    read a tensor, and reject a malformed one, the same way.
    """
    count = math.prod(shape)
    if content:
        if row is _STRING_ROW:
            raise BadInput("DT_STRING tensors must carry their values in string_val, not tensor_content")
        expected = count * row.dtype.itemsize
        if len(content) != expected:
            raise BadInput(
                f"tensor_content has {len(content)} bytes; shape {list(shape)} of "
                f"{_datatype_name(row.datatype)} needs {expected}"
            )
        arr = np.frombuffer(content, dtype=row.dtype).reshape(shape)
        if not arr.flags.aligned:
            # A view into the middle of a wire message may start at any byte: copy, and keep it read-only like a view.
            arr = arr.copy()
            arr.flags.writeable = False
        return arr

    given = len(values)
    if given > count:
        raise BadInput(f"{row.field} has {given} values; shape {list(shape)} holds only {count} elements")
    if given == count:
        return row.convert(values).reshape(shape)
    filled = row.convert(values) if given else row.convert((row.zero,))
    out = np.empty(count, dtype=row.dtype)
    out[: len(filled)] = filled
    out[len(filled) :] = filled[-1]
    return out.reshape(shape)
