"""Seldon Core's prediction messages (SeldonMessage, as JSON): what a Seldon client sends, read into arrays, and
the answer written in the kind the request came in.

A request carries its tensor in ``data`` as one of ``ndarray`` (nested lists), ``tensor`` (``shape`` and
flat ``values``) or ``tftensor`` (a TensorProto in protobuf's JSON), with optional ``names``; or a whole TF
Serving REST body in ``jsonData``, passed through as Seldon's TF Serving proxy passes it; and ``meta``
(``puid``, ``tags``, ...), echoed. ``strData`` and ``binData`` are refused, as the proxy refuses them.
Errors are Seldon's ``{"status": {"code", "info", "reason", "status": "FAILURE"}}``. No Flask here.
"""

from __future__ import annotations

import math
import uuid
from enum import StrEnum
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.errors import BadInput
from app.serving import tensors
from app.serving.protos.tensorflow.core.framework import tensor_pb2

FAILURE = "FAILURE"
# Seldon's reasons: a request it cannot use, and anything the model or the server did.
BAD_DATA = "MICROSERVICE_BAD_DATA"
INTERNAL_ERROR = "MICROSERVICE_INTERNAL_ERROR"


class Kind(StrEnum):
    """How a tensor travels in ``data``: the answer takes the request's kind."""

    NDARRAY = "ndarray"
    TENSOR = "tensor"
    TFTENSOR = "tftensor"


class SeldonTensor(BaseModel):
    """``data.tensor``: a shape and the values in row-major order."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(description="The tensor's shape")
    values: list[Any] = Field(description="Its values, flat, in row-major order")


class SeldonData(BaseModel):
    """``data``: one tensor, in one of three kinds, and optional names (echoed)."""

    model_config = ConfigDict(extra="forbid")

    names: list[str] | None = Field(None, description="Names of the columns (echoed in the answer)")
    ndarray: list[Any] | None = Field(None, description="The tensor as nested lists")
    tensor: SeldonTensor | None = None
    tftensor: dict[str, Any] | None = Field(None, description="A TensorProto in protobuf's JSON mapping")

    @model_validator(mode="after")
    def _one_kind(self) -> SeldonData:
        given = [kind.value for kind in Kind if getattr(self, kind.value) is not None]
        if len(given) != 1:
            raise ValueError(
                f"data must hold exactly one of ndarray, tensor and tftensor, not {', '.join(given) or 'none'}"
            )
        return self

    @property
    def kind(self) -> Kind:
        return next(kind for kind in Kind if getattr(self, kind.value) is not None)


class SeldonMeta(BaseModel):
    """``meta``: ``puid`` and ``tags`` are echoed; the rest of Seldon's fields are accepted and left."""

    model_config = ConfigDict(extra="allow")

    puid: str | None = Field(None, description="The prediction's id (one is made when absent)")
    tags: dict[str, Any] | None = Field(None, description="Echoed in the answer")


class SeldonRequest(BaseModel):
    """A SeldonMessage: ``data`` or ``jsonData`` (a TF Serving REST predict body), and ``meta``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: SeldonData | None = None
    json_data: Any = Field(None, alias="jsonData", description="A TF Serving REST predict body, passed through")
    str_data: str | None = Field(None, alias="strData", description="Not supported (the TF Serving proxy refuses it)")
    bin_data: str | None = Field(None, alias="binData", description="Not supported (the TF Serving proxy refuses it)")
    meta: SeldonMeta | None = None

    @model_validator(mode="after")
    def _one_payload(self) -> SeldonRequest:
        if self.str_data is not None or self.bin_data is not None:
            raise ValueError("strData and binData are not supported by the TF Serving proxy: send data or jsonData")
        if (self.data is None) == (self.json_data is None):
            raise ValueError("give exactly one of data and jsonData")
        return self


def read_request(body: bytes) -> SeldonRequest:
    """A request body as a SeldonMessage, or BadInput saying what is wrong."""
    from pydantic import ValidationError

    try:
        return SeldonRequest.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        raise BadInput(f"{where}: {message}" if where else message) from None


def input_array(data: SeldonData, dtype: np.dtype) -> np.ndarray:
    """The request's tensor as an array of the model input's dtype; BadInput when its values do not fit it."""
    kind = data.kind
    if kind is Kind.TFTENSOR:
        proto = tensor_pb2.TensorProto()
        try:
            json_format.ParseDict(data.tftensor, proto)
        except (json_format.ParseError, DecodeError, TypeError) as exc:
            raise BadInput(f"data.tftensor is not a TensorProto: {exc}") from None
        array = tensors.from_tensor_proto(proto)
        if array.dtype != dtype and not (dtype.kind == "O" and array.dtype.kind in "OSU"):
            raise BadInput(f"data.tftensor is {array.dtype}, the model's input {dtype}")
        return array
    if kind is Kind.TENSOR:
        assert data.tensor is not None
        shape = data.tensor.shape
        if any(size < 0 for size in shape) or math.prod(shape) != len(data.tensor.values):
            raise BadInput(
                f"data.tensor: shape {shape} holds {math.prod(shape) if all(s >= 0 for s in shape) else 'no'} "
                f"values, not {len(data.tensor.values)}"
            )
        return _typed(data.tensor.values, dtype, "data.tensor.values").reshape(shape)
    return _typed(data.ndarray, dtype, "data.ndarray")


def _typed(values: Any, dtype: np.dtype, where: str) -> np.ndarray:
    """Nested lists of JSON values as an array of ``dtype``: rectangular, and each value of the dtype's kind."""
    try:
        loose = np.array(values, dtype=object)
    except ValueError:
        raise BadInput(f"{where} is not rectangular: every row must have the same length") from None
    flat = loose.reshape(-1)
    if any(isinstance(value, list) for value in flat):
        raise BadInput(f"{where} is not rectangular: every row must have the same length")
    if dtype.kind == "O":
        if not all(isinstance(value, str) for value in flat):
            raise BadInput(f"{where}: the model's input takes strings")
        out = np.empty(loose.shape, dtype=object)
        out.reshape(-1)[:] = [value.encode("utf-8") for value in flat]
        return out
    # Seldon's messages carry numbers as protobuf Values, which are doubles: an integer input gets 190.0 from
    # SeldonClient, so a whole number written as a float is that integer; 1.5 is not.
    for value in flat:
        if dtype.kind == "b":
            fits = isinstance(value, bool)
        elif dtype.kind in "iu":
            fits = not isinstance(value, bool) and (
                isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            )
        else:
            fits = not isinstance(value, bool) and isinstance(value, int | float)
        if not fits:
            raise BadInput(f"{where}: {value!r} is not a value of the model's input ({dtype})")
    if dtype.kind in "iu":
        flat = np.array([int(value) for value in flat], dtype=object)
        loose = flat.reshape(loose.shape)
    try:
        array = np.array(flat.tolist(), dtype=dtype).reshape(loose.shape)
    except OverflowError:
        raise BadInput(f"{where}: a value is out of the range of the model's input ({dtype})") from None
    if dtype.kind in "iu" and not np.array_equal(array.astype(object), loose):
        raise BadInput(f"{where}: a value is out of the range of the model's input ({dtype})")
    return array


def output_data(value: np.ndarray, kind: Kind, names: list[str] | None) -> dict[str, Any]:
    """An output array as ``data`` of the request's kind, its names echoed."""
    value = np.asarray(value)
    data: dict[str, Any] = {"names": list(names or [])}
    if kind is Kind.TFTENSOR:
        data["tftensor"] = json_format.MessageToDict(tensors.to_tensor_proto(value))
    elif kind is Kind.TENSOR:
        data["tensor"] = {"shape": list(value.shape), "values": _listed(value.reshape(-1))}
    else:
        data["ndarray"] = _listed(value)
    return data


def _listed(value: np.ndarray) -> Any:
    """An array as JSON values: strings as text (bytes that are not UTF-8 with U+FFFD), numbers as numbers."""
    if value.dtype.kind in "OS":
        flat = [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in value.ravel()]
        return np.array(flat, dtype=object).reshape(value.shape).tolist()
    return value.tolist()


def answer_meta(meta: SeldonMeta | None, servable: str, version: int | None) -> dict[str, Any]:
    """The answer's meta: the request's puid (or a new one) and tags, and which servable version answered."""
    puid = meta.puid if meta is not None and meta.puid else uuid.uuid4().hex
    return {
        "puid": puid,
        "tags": dict(meta.tags) if meta is not None and meta.tags else {},
        "requestPath": {servable: "" if version is None else str(version)},
    }


def failure(status: int, info: str) -> dict[str, Any]:
    """Seldon's error body: the HTTP status as the code, the message, Seldon's reason, FAILURE."""
    reason = BAD_DATA if 400 <= status < 500 else INTERNAL_ERROR
    return {"status": {"code": status, "info": info, "reason": reason, "status": FAILURE}}
