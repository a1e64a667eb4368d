"""The Open Inference Protocol's binary tensor data extension: a body of JSON then tensors' bytes, both ways.

As Triton's ``extension_binary_data.md`` describes it and its HTTP server and ``tritonclient`` read and write it:

- A request whose ``Inference-Header-Content-Length`` header is N has its JSON in the body's first N bytes and
  the binary data of its inputs after it, in the order of ``inputs``: each input so sent has
  ``"parameters": {"binary_data_size": <bytes>}`` and no ``data``. The sizes must add up to the rest of the body.
- A tensor's bytes are its elements in row-major order, little-endian, with no padding: a BOOL is one byte, 0
  or 1; a BYTES element is its length as a 4-byte little-endian unsigned integer, then its bytes.
- An output is sent as binary data when its ``parameters.binary_data`` is true, or when it does not say and the
  request's ``parameters.binary_data_output`` is true; it then has ``"parameters": {"binary_data_size": ...}``
  and no ``data``, and the answer is the JSON, then each such output's bytes in the order of ``outputs``, with
  the JSON's length in ``Inference-Header-Content-Length`` (when any output has bytes, as Triton answers).

Every malformed body is ``app.errors.BadInput`` naming what does not add up. No TensorFlow here.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import BadInput
from app.protocols import v2_tensors
from app.protocols.v2_tensors import InferenceRequest, RequestInput
from app.serving import tensors

__all__ = [
    "CONTENT_TYPE",
    "EXTENSION",
    "HEADER",
    "Inference",
    "input_array",
    "output_tensor",
    "read_request",
]

HEADER = "Inference-Header-Content-Length"
CONTENT_TYPE = "application/octet-stream"  # of a body with binary data, as Triton sends it
EXTENSION = "binary_tensor_data"  # its name in the server metadata's extensions
SIZE = "binary_data_size"

_DTYPES = {row.name: row.dtype for row in v2_tensors.DATATYPES}
_LENGTH = struct.Struct("<I")  # a BYTES element's length


@dataclass(frozen=True)
class Inference:
    """A request read from its body: the JSON, and the binary data of each input (None for one given in JSON)."""

    request: InferenceRequest
    binary_inputs: tuple[memoryview | None, ...]
    binary_outputs: Mapping[str, bool]  # what each named output's parameters.binary_data says
    binary_by_default: bool  # the request's parameters.binary_data_output

    def output_is_binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_by_default)


def read_request(body: bytes, header_length: str | None) -> Inference:
    """The request in ``body``, its JSON ``header_length`` bytes long (the header's value; None: the whole body)."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        size = _header_size(header_length, len(body))
        json_part, binary = body[:size], memoryview(body)[size:]
    try:
        request = v2_tensors.read_request(json_part)
    except BadInput as exc:
        if header_length is None and "trailing characters" in exc.message:
            raise BadInput(f"{exc.message} (a body with binary tensor data needs the {HEADER} header)") from None
        raise
    return Inference(
        request,
        _binary_inputs(request, binary, has_header=header_length is not None),
        {output.name: _binary_flag(output.parameters, "binary_data", f"output {output.name!r}")
         for output in request.outputs or () if "binary_data" in (output.parameters or {})},
        _binary_flag(request.parameters, "binary_data_output", "the request") or False,
    )  # fmt: skip


def _header_size(value: str, body_size: int) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadInput(f"{HEADER} must be the JSON's length in bytes, a whole number, not {text[:40]!r}")
    if len(text) > 19 or int(text) > body_size:
        raise BadInput(f"{HEADER} is {text[:40]}, but the body has only {body_size} bytes")
    if int(text) == 0:
        # Triton reads 0 as a "raw binary request": the whole body is one input's bytes, its shape guessed from them.
        raise BadInput(f"{HEADER}: 0 (a body of one input's bytes and no JSON) is not offered: send the JSON first")
    return int(text)


def _binary_flag(parameters: Mapping[str, Any] | None, key: str, where: str) -> bool | None:
    value = (parameters or {}).get(key)
    if value is not None and type(value) is not bool:
        raise BadInput(f"{where}: parameters.{key} must be true or false, not {value!r}")
    return value


def _binary_inputs(request: InferenceRequest, binary: memoryview, *, has_header: bool) -> tuple[memoryview | None, ...]:
    """Each input's bytes, cut from ``binary`` in the order of the inputs; BadInput unless the sizes add up to it."""
    found: list[memoryview | None] = []
    offset = 0
    for item in request.inputs:
        size = (item.parameters or {}).get(SIZE)
        if size is None:
            if item.data is None:
                raise BadInput(f"input {item.name!r} has neither data nor parameters.{SIZE}")
            found.append(None)
            continue
        if type(size) is not int or size < 0:
            raise BadInput(f"input {item.name!r}: parameters.{SIZE} must be a whole number of bytes, not {size!r}")
        if item.data is not None:
            raise BadInput(f"input {item.name!r} has both data and parameters.{SIZE}: give its values one way")
        if size and not has_header:
            raise BadInput(f"input {item.name!r} has {size} bytes of binary data, but the request has no {HEADER} "
                           "header to say where the JSON ends and the binary data begins")  # fmt: skip
        left = len(binary) - offset
        if size > left:
            raise BadInput(
                f"input {item.name!r}: parameters.{SIZE} is {size}, but only {left} bytes of binary data are left "
                f"after the JSON ({HEADER}) and the inputs before it"
            )
        found.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise BadInput(
            f"the body has {len(binary) - offset} bytes after the inputs' binary data: the inputs' "
            f"{SIZE} add up to {offset} bytes, the body after the JSON ({HEADER}) is {len(binary)}"
        )
    return tuple(found)


def input_array(item: RequestInput, data: memoryview | None) -> np.ndarray:
    """The input as an array of its datatype and shape, from its binary ``data`` (None: from its JSON ``data``);
    BadInput when the bytes do not fit them."""
    if data is None:
        return v2_tensors.input_array(item)
    count = math.prod(item.shape)
    if item.datatype == "BYTES":
        elements = _bytes_elements(item, data, count)
        shape = v2_tensors.array_shape(item)
        out = np.empty(count, dtype=object)
        out[:] = elements
        return out.reshape(shape)
    dtype = _DTYPES[item.datatype]
    needed = count * dtype.itemsize
    if len(data) != needed:
        raise BadInput(
            f"input {item.name!r}: parameters.{SIZE} is {len(data)}, but shape {list(item.shape)} of "
            f"{item.datatype} is {needed} bytes"
        )
    shape = v2_tensors.array_shape(item)
    array = np.frombuffer(data, dtype=dtype)
    if item.datatype == "BOOL" and array.size and array.view(np.uint8).max() > 1:
        raise BadInput(f"input {item.name!r}: BOOL binary data must be bytes 0 (false) and 1 (true)")
    if not array.flags.aligned:  # the JSON's length puts the bytes at any offset: copy, read-only like the view
        array = array.copy()
        array.flags.writeable = False
    return array.reshape(shape)


def _bytes_elements(item: RequestInput, data: memoryview, count: int) -> list[bytes]:
    """The BYTES elements in ``data``: each a 4-byte little-endian length, then that many bytes."""
    elements: list[bytes] = []
    offset, size = 0, len(data)
    while offset < size:
        if len(elements) == count:
            raise BadInput(
                f"input {item.name!r}: {size - offset} bytes follow the {count} BYTES elements "
                f"of shape {list(item.shape)} in its binary data"
            )
        if size - offset < _LENGTH.size:
            raise BadInput(f"input {item.name!r}: BYTES element {len(elements)} is cut off in its 4-byte length")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if length > size - offset:
            raise BadInput(
                f"input {item.name!r}: BYTES element {len(elements)} is {length} bytes long, but only "
                f"{size - offset} bytes of the input's binary data are left"
            )
        elements.append(bytes(data[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise BadInput(
            f"input {item.name!r}: binary data holds {len(elements)} BYTES elements, shape {list(item.shape)} "
            f"needs {count}"
        )
    return elements


def output_tensor(name: str, value: np.ndarray, *, binary: bool) -> tuple[dict[str, Any], bytes]:
    """$response_output of one output array, and its binary data (empty for an output in JSON)."""
    if not binary:
        return v2_tensors.output_tensor(name, value), b""
    datatype = v2_tensors.datatype_of_array(value.dtype)
    if datatype == "BYTES":
        data = b"".join(_LENGTH.pack(len(item)) + item for item in tensors.string_items(value))
    else:
        data = np.ascontiguousarray(value, dtype=_DTYPES[datatype]).tobytes()
    tensor = {"name": name, "shape": list(value.shape), "datatype": datatype, "parameters": {SIZE: len(data)}}
    return tensor, data
