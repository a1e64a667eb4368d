"""PredictRequest and PredictResponse written and read as raw protobuf wire bytes, so big tensors are copied once.

The protobuf route costs several copies of every tensor: the ``tensor_content``
setter copies the array's bytes, ``request.inputs[alias].CopyFrom`` copies them
again, and ``SerializeToString`` once more. :func:`encode_predict_request` writes
the whole request itself instead: the ModelSpec through protobuf (it is tiny),
each input TensorProto by hand, and the array's bytes copied once, by
``bytes.join``, straight into the message. GrpcBackend sends those bytes with an
identity serializer.

:func:`decode_predict_response` reads a response the same way: ``tensor_content``
becomes an ``np.frombuffer`` view into the response bytes (copied only where it
would be misaligned), packed ``float_val`` / ``double_val`` (what TF Serving
answers with by default, ``AsProtoField``, for float models) are ``frombuffer``
over their bytes too, and varint fields (``int_val``, ``int64_val``, ``bool_val``,
...) are handed, alone, to protobuf's C parser, which reads varints faster than
any numpy formulation we measured. The wire is first read whole; only then are
tensors assembled, by the same :func:`app.serving.tensors.array_from_parts` that
``from_tensor_proto`` uses, so every semantic check (shape, value count, ranges)
and its BadInput message is shared. Anything the fast reader does not expect
(an unpacked repeated field, an unknown field, a malformed varint, a truncated
message) sends the whole response down the protobuf route,
``PredictResponse.FromString`` plus ``from_tensor_proto``: the result, or the
error, is the same either way.

Wire format reference: https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import message

from app.errors import BadInput
from app.serving import tensors
from app.serving.protos.tensorflow.core.framework import tensor_pb2
from app.serving.protos.tensorflow_serving.apis import model_pb2, predict_pb2

__all__ = [
    "PREDICT_METHOD",
    "decode_predict_response",
    "encode_predict_request",
    "encode_tensor",
    "response_version",
]

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"

# Wire types.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_U64 = (1 << 64) - 1

_TENSOR_FIELDS = {field.name: field.number for field in tensor_pb2.TensorProto.DESCRIPTOR.fields}
_DTYPE = _TENSOR_FIELDS["dtype"]
_SHAPE = _TENSOR_FIELDS["tensor_shape"]
_VERSION_NUMBER = _TENSOR_FIELDS["version_number"]
_CONTENT = _TENSOR_FIELDS["tensor_content"]
_STRING_VAL = _TENSOR_FIELDS["string_val"]
_SHAPE_DIM, _SHAPE_UNKNOWN_RANK, _DIM_SIZE, _DIM_NAME = 2, 3, 1, 2
_MAP_KEY, _MAP_VALUE = 1, 2
_REQUEST_MODEL_SPEC = predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["model_spec"].number
_REQUEST_INPUTS = predict_pb2.PredictRequest.DESCRIPTOR.fields_by_name["inputs"].number
_RESPONSE_MODEL_SPEC = predict_pb2.PredictResponse.DESCRIPTOR.fields_by_name["model_spec"].number
_RESPONSE_OUTPUTS = predict_pb2.PredictResponse.DESCRIPTOR.fields_by_name["outputs"].number


# The packed numeric *_val fields of DTYPES, by field number. Fixed-width ones are their values' bytes already;
# varint ones are read by protobuf's own C parser (upb), which beats any numpy formulation of varint decoding.
_FIXED: dict[int, np.dtype] = {
    _TENSOR_FIELDS["float_val"]: np.dtype("<f4"),
    _TENSOR_FIELDS["double_val"]: np.dtype("<f8"),
}
_VARINTS: dict[int, str] = {
    _TENSOR_FIELDS[name]: name for name in ("half_val", "int_val", "int64_val", "uint32_val", "uint64_val", "bool_val")
}
_PACKED = {*_FIXED, *_VARINTS}
assert {_TENSOR_FIELDS[row.field] for row in tensors.DTYPES} == {*_PACKED, _STRING_VAL}, "a DTYPES field is unread"


# -- encoding -------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64 values are written as their 64-bit two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_prefixed(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def encode_tensor(value: npt.ArrayLike) -> tuple[list[Any], int]:
    """One TensorProto's wire bytes, as parts for ``bytes.join`` (the array itself among them) and their total size.

    Writes what ``to_tensor_proto(value).SerializeToString()`` writes: dtype, shape
    (absent for a scalar), then ``tensor_content`` or ``string_val``.
    """
    arr = np.asarray(value)
    row = tensors.row_of_dtype(arr.dtype)
    head = bytearray(_key(_DTYPE, _VARINT) + _varint(row.datatype))
    if arr.ndim:
        dims = b"".join(
            _length_prefixed(_SHAPE_DIM, _key(_DIM_SIZE, _VARINT) + _varint(size) if size else b"")
            for size in arr.shape
        )
        head += _length_prefixed(_SHAPE, dims)
    if row.dtype.kind == "O":
        body = b"".join(_length_prefixed(_STRING_VAL, item) for item in tensors.string_items(arr))
        return [head, body], len(head) + len(body)
    # ascontiguousarray is a no-op for a C-contiguous little-endian array, which then goes into the join as it is.
    content = np.ascontiguousarray(arr, dtype=row.dtype)
    if not content.nbytes:
        return [head], len(head)
    head += _key(_CONTENT, _LEN) + _varint(content.nbytes)
    return [head, content], len(head) + content.nbytes


def encode_predict_request(spec: model_pb2.ModelSpec, inputs: Mapping[str, npt.ArrayLike]) -> bytes:
    """A serialized PredictRequest for ``spec`` with ``inputs``; each array's bytes are copied exactly once."""
    parts: list[Any] = []
    spec_bytes = spec.SerializeToString()
    if spec_bytes:
        parts.append(_length_prefixed(_REQUEST_MODEL_SPEC, spec_bytes))
    for alias, value in inputs.items():
        try:
            key = alias.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BadInput(f"input name {alias!r} is not valid UTF-8: {exc}") from None
        tensor_parts, tensor_size = encode_tensor(value)
        entry_head = _length_prefixed(_MAP_KEY, key) + _key(_MAP_VALUE, _LEN) + _varint(tensor_size)
        parts += [_key(_REQUEST_INPUTS, _LEN), _varint(len(entry_head) + tensor_size), entry_head, *tensor_parts]
    return b"".join(parts)


# -- decoding -------------------------------------------------------------------------------------


class _NotFast(Exception):
    """The fast reader met something it does not handle; the protobuf route decides."""


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            break
    raise _NotFast


def _fields(data: bytes, pos: int, end: int):
    """Yield ``(field number, wire type, value)``: an int for varints, ``(start, stop)`` for length-delimited fields."""
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(data, pos, end)
        elif wire_type == _LEN:
            size, pos = _read_varint(data, pos, end)
            if pos + size > end:
                raise _NotFast
            value, pos = (pos, pos + size), pos + size
        else:
            raise _NotFast  # fixed-width scalars only occur unpacked in a TensorProto, and groups not at all
        if field == 0:
            raise _NotFast
        yield field, wire_type, value


def _utf8(data: bytes, start: int, stop: int) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise _NotFast from None  # proto3 strings must be UTF-8; protobuf itself will say so


def _packed(data: bytes, view: memoryview, field: int, spans: list[tuple[int, int]]) -> Sequence[Any]:
    """A packed ``*_val`` field's values; several runs of one field concatenate, as protobuf says."""
    dtype = _FIXED.get(field)
    if dtype is not None:
        size = sum(stop - start for start, stop in spans)
        if size % dtype.itemsize:
            raise _NotFast
        if len(spans) == 1:
            return np.frombuffer(data, dtype, size // dtype.itemsize, spans[0][0])
        return np.frombuffer(b"".join(view[start:stop] for start, stop in spans), dtype)
    # A TensorProto holding only this field, parsed by protobuf: numpy then copies the values out at memcpy speed.
    size = sum(stop - start for start, stop in spans)
    only = b"".join([_key(field, _LEN), _varint(size), *(view[start:stop] for start, stop in spans)])
    return getattr(tensor_pb2.TensorProto.FromString(only), _VARINTS[field])


class _RawTensor:
    """One TensorProto read off the wire but not yet checked: its dtype, dims, content and value fields."""

    __slots__ = ("content", "datatype", "sizes", "unknown_rank", "values")

    def __init__(self) -> None:
        self.datatype = 0
        self.sizes: list[int] = []
        self.unknown_rank = False
        self.content: memoryview | bytes = b""
        self.values: dict[int, Any] = {}

    def array(self) -> np.ndarray:
        row = tensors.row_of_datatype(self.datatype)
        shape = tensors.checked_shape(self.sizes, unknown_rank=self.unknown_rank)
        field = _TENSOR_FIELDS[row.field]
        return tensors.array_from_parts(row, shape, self.content, self.values.get(field, ()))


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF  # an enum is an int32: protobuf keeps the varint's low 32 bits
    return value - (1 << 32) if value >> 31 else value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >> 63 else value


def _read_shape(data: bytes, start: int, stop: int, tensor: _RawTensor) -> None:
    for field, wire_type, value in _fields(data, start, stop):
        if field == _SHAPE_DIM and wire_type == _LEN:
            size = 0
            for dim_field, dim_wire, dim_value in _fields(data, *value):
                if dim_field == _DIM_SIZE and dim_wire == _VARINT:
                    size = _signed64(dim_value)
                elif dim_field == _DIM_NAME and dim_wire == _LEN:
                    _utf8(data, *dim_value)
                else:
                    raise _NotFast
            tensor.sizes.append(size)
        elif field == _SHAPE_UNKNOWN_RANK and wire_type == _VARINT:
            tensor.unknown_rank = value != 0
        else:
            raise _NotFast


def _read_tensor(data: bytes, view: memoryview, start: int, stop: int) -> _RawTensor:
    tensor = _RawTensor()
    spans: dict[int, list[tuple[int, int]]] = {}
    strings: list[bytes] = []
    for field, wire_type, value in _fields(data, start, stop):
        if field == _DTYPE and wire_type == _VARINT:
            tensor.datatype = _signed32(value)
        elif field == _SHAPE and wire_type == _LEN:
            _read_shape(data, *value, tensor)  # a repeated tensor_shape merges: its dims add up
        elif field == _CONTENT and wire_type == _LEN:
            tensor.content = view[value[0] : value[1]]
        elif field == _STRING_VAL and wire_type == _LEN:
            strings.append(data[value[0] : value[1]])
        elif field in _PACKED and wire_type == _LEN:
            spans.setdefault(field, []).append(value)
        elif field == _VERSION_NUMBER and wire_type == _VARINT:
            pass
        else:
            raise _NotFast  # unpacked values, complex/resource/variant values, unknown fields
    tensor.values = {field: _packed(data, view, field, field_spans) for field, field_spans in spans.items()}
    if strings:
        tensor.values[_STRING_VAL] = strings
    return tensor


def _read_response(data: bytes) -> dict[str, _RawTensor]:
    view = memoryview(data)
    outputs: dict[str, _RawTensor] = {}
    for field, wire_type, value in _fields(data, 0, len(data)):
        if field == _RESPONSE_OUTPUTS and wire_type == _LEN:
            alias, tensor = "", None
            for entry_field, entry_wire, entry_value in _fields(data, *value):
                if entry_field == _MAP_KEY and entry_wire == _LEN:
                    alias = _utf8(data, *entry_value)
                elif entry_field == _MAP_VALUE and entry_wire == _LEN and tensor is None:
                    tensor = _read_tensor(data, view, *entry_value)
                else:
                    raise _NotFast
            outputs[alias] = tensor if tensor is not None else _RawTensor()  # a repeated key: the last one wins
        elif field == _RESPONSE_MODEL_SPEC and wire_type == _LEN:
            model_pb2.ModelSpec.FromString(data[value[0] : value[1]])  # only checked, as protobuf would
        else:
            raise _NotFast
    return outputs


def decode_predict_response(data: bytes) -> dict[str, np.ndarray]:
    """The output arrays of a serialized PredictResponse, equal to ``from_tensor_proto`` of each parsed output.

    ``tensor_content`` outputs are read-only views into ``data`` (copied only where a
    view would be misaligned); ``*_val`` outputs are fresh writable arrays. Raises
    BadInput for a tensor ``from_tensor_proto`` rejects, and ``message.DecodeError``
    for bytes that are no PredictResponse.
    """
    try:
        return {alias: tensor.array() for alias, tensor in _read_response(data).items()}
    except (_NotFast, message.DecodeError, BadInput):
        # BadInput too: with several bad outputs, the error is the one protobuf's map order meets first.
        response = predict_pb2.PredictResponse.FromString(data)
        return {alias: tensors.from_tensor_proto(proto) for alias, proto in response.outputs.items()}


def response_version(data: bytes) -> int | None:
    """The version named in a serialized PredictResponse's ``model_spec``: the one that answered (None if unnamed).

    Only the top level is walked; the outputs are skipped by their lengths, not read.
    """
    try:
        for field, wire_type, value in _fields(data, 0, len(data)):
            if field == _RESPONSE_MODEL_SPEC and wire_type == _LEN:
                spec = model_pb2.ModelSpec.FromString(data[value[0] : value[1]])
                return spec.version.value if spec.HasField("version") else None
        return None
    except (_NotFast, message.DecodeError):
        response = predict_pb2.PredictResponse.FromString(data)
        return response.model_spec.version.value if response.model_spec.HasField("version") else None
