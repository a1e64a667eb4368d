"""Open Inference Protocol (KServe v2) tensors: the request and its typed inputs, arrays back as outputs.

:data:`PROTOCOL_NAMES` names the protocol's datatype of each TF DataType; its numpy dtype is
``app.serving.tensors``' (:data:`DATATYPES` puts the three together). The pydantic models declare the
request once, for validating it and for the OpenAPI document.

- An input's ``data`` is row-major, flat or nested as its ``shape`` says; its values must be of the
  datatype (JSON booleans for BOOL, whole numbers in range for the integers, numbers for FP16/32/64,
  strings for BYTES, read as base64 when the input's ``parameters`` say ``"content_type": "base64"``).
  An input may instead come as binary data after the JSON (``parameters.binary_data_size``, the binary
  tensor data extension: ``app.protocols.v2_binary``); the model here declares that parameter, that module
  reads the bytes.
- An output is written flat; BYTES as strings when every element is UTF-8, else all base64 with
  ``"parameters": {"content_type": "base64"}``; floats as JSON numbers (``NaN`` and ``Infinity`` as
  Python writes them).

Errors are ``app.errors.BadInput`` with a message that names the input. No TensorFlow here.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from app.errors import BadInput
from app.serving import tensors
from app.serving.protos.tensorflow.core.framework import types_pb2

__all__ = [
    "DATATYPES",
    "PROTOCOL_NAMES",
    "InferenceRequest",
    "RequestInput",
    "RequestOutput",
    "array_shape",
    "datatype_of",
    "datatype_of_array",
    "input_array",
    "output_tensor",
    "read_request",
    "tensor_metadata",
]

BASE64 = "base64"
_INT64_MAX = 2**63 - 1  # the largest dimension TF (and numpy) can have


# The protocol's name of every TF DataType the gateway's arrays hold (the table of app.serving.tensors).
PROTOCOL_NAMES: dict[int, str] = {
    types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_UINT8: "UINT8",
    types_pb2.DT_UINT16: "UINT16",
    types_pb2.DT_UINT32: "UINT32",
    types_pb2.DT_UINT64: "UINT64",
    types_pb2.DT_INT8: "INT8",
    types_pb2.DT_INT16: "INT16",
    types_pb2.DT_INT32: "INT32",
    types_pb2.DT_INT64: "INT64",
    types_pb2.DT_HALF: "FP16",
    types_pb2.DT_FLOAT: "FP32",
    types_pb2.DT_DOUBLE: "FP64",
    types_pb2.DT_STRING: "BYTES",
}
assert set(PROTOCOL_NAMES) == {row.datatype for row in tensors.DTYPES}, "a dtype of tensors.DTYPES has no name here"


class Datatype(NamedTuple):
    name: str  # the protocol's
    dtype: np.dtype  # tensors.DTYPES'
    tf: int  # TF DataType


DATATYPES: tuple[Datatype, ...] = tuple(
    Datatype(name, tensors.numpy_dtype(datatype), datatype) for datatype, name in PROTOCOL_NAMES.items()
)
_BY_NAME = {row.name: row for row in DATATYPES}
DatatypeName = Literal[tuple(PROTOCOL_NAMES.values())]  # type: ignore[valid-type]  # the names above, for pydantic

Parameters = dict[str, StrictStr | StrictInt | StrictFloat | StrictBool]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RequestInput(_Strict):
    """One input tensor, its whole batch ($request_input)."""

    name: Annotated[str, Field(min_length=1, description="The input's name: an input alias of the signature")]
    shape: Annotated[
        list[Annotated[int, Field(ge=0, le=_INT64_MAX)]],
        Field(max_length=tensors.MAX_RANK, description="The tensor's shape"),
    ]
    datatype: DatatypeName
    parameters: Parameters | None = Field(
        default=None,
        description='`{"content_type": "base64"}`: BYTES data given in base64; `{"binary_data_size": <bytes>}`: '
        "the data comes as that many bytes after the JSON (the binary tensor data extension), not in `data`",
    )
    data: list[Any] | None = Field(
        default=None,
        description="The values in row-major order, flat or nested as the shape is; absent for binary data",
    )


class RequestOutput(_Strict):
    """An output to return ($request_output)."""

    name: Annotated[str, Field(min_length=1)]
    parameters: Parameters | None = Field(
        default=None, description='`{"binary_data": true}`: this output comes as binary data after the JSON'
    )


class InferenceRequest(_Strict):
    """Inputs for one inference, and the outputs wanted ($inference_request)."""

    id: str | None = Field(default=None, description="Returned in the response as it is")
    parameters: Parameters | None = Field(
        default=None,
        description='`{"signature_name": "<name>"}` runs another signature than serving_default; '
        '`{"binary_data_output": true}`: every output as binary data, but those whose `binary_data` says otherwise',
    )
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = Field(default=None, description="Only these outputs; default: all")


def read_request(body: bytes) -> InferenceRequest:
    """The request in the body, or BadInput naming the first thing wrong with it."""
    try:
        return InferenceRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise BadInput(f"{where}: {first['msg']}") from None


def datatype_of(tf_datatype: int) -> str:
    """The protocol's name of a TF DataType (TF's own name for one the protocol has none for)."""
    name = PROTOCOL_NAMES.get(tf_datatype)
    return name if name is not None else types_pb2.DataType.Name(tf_datatype).removeprefix("DT_")


def tensor_metadata(alias: str, info: Any) -> dict[str, Any]:
    """$metadata_tensor of a signature's TensorInfo: unknown dimensions are -1, an unknown rank is ``[-1]``."""
    shape = [-1] if info.tensor_shape.unknown_rank else [dim.size for dim in info.tensor_shape.dim]
    return {"name": alias, "datatype": datatype_of(info.dtype), "shape": shape}


def _is_int(value: Any) -> bool:
    return type(value) is int


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def array_shape(item: RequestInput) -> tuple[int, ...]:
    """The input's shape, once its element count is known to fit its data: BadInput for one no array can have."""
    shape = tuple(item.shape)
    # Only an empty tensor gets here with a shape this big: numpy refuses one whose other dimensions overflow it.
    if math.prod(size for size in shape if size) * _BY_NAME[item.datatype].dtype.itemsize > _INT64_MAX:
        raise BadInput(f"input {item.name!r}: shape {list(shape)} is too large for an array, even an empty one")
    return shape


def input_array(item: RequestInput) -> np.ndarray:
    """The input's JSON data as an array of its datatype and shape; BadInput when the data does not fit them."""
    row = _BY_NAME[item.datatype]
    if item.data is None:
        raise BadInput(f"input {item.name!r} has no data")
    count = math.prod(item.shape)
    values = _flat(item, tuple(item.shape), count)
    shape = array_shape(item)
    if row.name == "BYTES":
        as_base64 = (item.parameters or {}).get("content_type") == BASE64
        out = np.empty(count, dtype=object)
        out[:] = [_bytes_of(item.name, value, as_base64) for value in values]
        return out.reshape(shape)
    if row.name == "BOOL":
        accepts, kind = (lambda value: type(value) is bool), "true or false"
    elif row.dtype.kind in "iu":
        accepts, kind = _is_int, "whole numbers"
    else:
        accepts, kind = _is_number, "numbers"
    wrong = next((value for value in values if not accepts(value)), _NONE)
    if wrong is not _NONE:
        raise BadInput(f"input {item.name!r}: {row.name} data must be {kind}, not {_shown(wrong)}")
    if row.dtype.kind in "iu" and values:
        info = np.iinfo(row.dtype)
        low, high = min(values), max(values)
        if low < info.min or high > info.max:
            raise BadInput(f"input {item.name!r}: {row.name} holds values from {info.min} to {info.max}, not {low}")
    with np.errstate(over="ignore"):  # a number past FP16's or FP32's range is infinity there
        return (
            np.array(values, dtype=np.float64 if row.dtype.kind == "f" else row.dtype).astype(row.dtype).reshape(shape)
        )


_NONE = object()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _flat(item: RequestInput, shape: tuple[int, ...], count: int) -> list:
    """The data in row-major order: given flat, or nested exactly as the shape is."""
    data = item.data or []
    if all(not isinstance(value, list) for value in data):
        if len(data) != count:
            raise BadInput(f"input {item.name!r}: data holds {len(data)} values, shape {list(shape)} needs {count}")
        return data
    try:
        grid = np.array(data, dtype=object)
    except ValueError:
        grid = None
    if grid is None or grid.shape != shape or any(isinstance(value, list) for value in grid.ravel().tolist()):
        raise BadInput(
            f"input {item.name!r}: nested data must have the input's shape {list(shape)}, or give the values flat"
        )
    return grid.ravel().tolist()


def _bytes_of(name: str, value: Any, as_base64: bool) -> bytes:
    if type(value) is not str:
        raise BadInput(f"input {name!r}: BYTES data must be strings, not {_shown(value)}")
    if not as_base64:
        return value.encode("utf-8")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"input {name!r}: {_shown(value)} is not base64") from None


def output_tensor(name: str, value: np.ndarray) -> dict[str, Any]:
    """$response_output of one output array."""
    datatype = datatype_of_array(value.dtype)
    tensor: dict[str, Any] = {"name": name, "shape": list(value.shape), "datatype": datatype}
    flat = value.ravel().tolist()
    if datatype == "BYTES":
        items = [item if isinstance(item, bytes) else str(item).encode("utf-8") for item in flat]
        try:
            flat = [item.decode("utf-8") for item in items]
        except UnicodeDecodeError:
            flat = [base64.b64encode(item).decode("ascii") for item in items]
            tensor["parameters"] = {"content_type": BASE64}
    tensor["data"] = flat
    return tensor


def datatype_of_array(dtype: np.dtype) -> str:
    """The protocol's datatype of an output array's dtype; BadInput for one it has none for."""
    try:
        return PROTOCOL_NAMES[tensors.row_of_dtype(dtype).datatype]
    except BadInput:
        raise BadInput(f"an output of dtype {dtype} has no Open Inference Protocol datatype") from None
