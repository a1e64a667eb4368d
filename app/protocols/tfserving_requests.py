"""TF Serving's REST requests decoded: predict bodies into input arrays, classify and regress bodies into tf.Examples.

- :func:`predict_request`: ``instances`` (row) or ``inputs`` (columnar) into one array per input,
  typed by the signature's TensorInfo as FillPredictRequestFromJson types them, with its checks
  and messages (levels, list sizes, shapes, base64, "not of expected type").
- :func:`examples_input`: ``examples`` and ``context`` of classify/regress into an ``Input`` of
  tf.Examples (``bytes_list``/``float_list``/``int64_list`` chosen per value).

They take the value ``app.protocols.tfserving_reader.parse`` read. Every error is a
:class:`app.errors.ServingStatus` with TF Serving's code and message.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from app.errors import BadInput, ServingStatus
from app.protocols.tfserving_dtypes import (
    CONVERSIONS,
    INT64,
    Conversion,
    data_type_string,
    decode_base64,
    is_base64_object,
    type_error,
    values_array,
)
from app.protocols.tfserving_reader import JsonObject, invalid_argument
from app.protocols.tfserving_writer import debug_string, json_type
from app.serving import tensors
from app.serving.protos.tensorflow.core.example import example_pb2, feature_pb2
from app.serving.protos.tensorflow.core.framework import types_pb2
from app.serving.protos.tensorflow_serving.apis import input_pb2

__all__ = ["PredictFormat", "PredictRequest", "examples_input", "predict_request", "signature_name"]


# -- predict requests ------------------------------------------------------------------------------------


class PredictFormat(enum.Enum):
    """JsonPredictRequestFormat: the answer has the request's layout."""

    ROW = "instances"  # answered as "predictions"
    COLUMNAR = "inputs"  # answered as "outputs"


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str  # "" when the request names none (the default signature)
    inputs: dict[str, np.ndarray]
    format: PredictFormat


def signature_name(doc: Any) -> str:
    """FillSignature: the optional ``signature_name``, which must be a string."""
    if not isinstance(doc, JsonObject):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    name = doc.find("signature_name", _MISSING)
    if name is _MISSING:
        return ""
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


_MISSING = object()


def predict_request(doc: Any, input_types: Callable[[str], Mapping[str, int]]) -> PredictRequest:
    """FillPredictRequestFromJson: the signature's inputs from ``instances`` or ``inputs``.

    ``input_types(signature_name)`` gives the signature's input aliases and DataTypes (it is where
    an unknown model, version, label or signature fails, after the body has been read).
    """
    name = signature_name(doc)
    types = dict(input_types(name))
    if not types:
        raise invalid_argument(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    instances = doc.find("instances", _MISSING)
    inputs = doc.find("inputs", _MISSING)
    if instances is not _MISSING:
        if inputs is not _MISSING:
            raise invalid_argument(
                f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
                "'instances' keys to exist "
            )
        if not isinstance(instances, list):
            raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid_argument(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return PredictRequest(name, _from_instances(instances, types), PredictFormat.ROW)
    if inputs is not _MISSING:
        return PredictRequest(name, _from_inputs(inputs, types), PredictFormat.COLUMNAR)
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _dense_shape(value: Any) -> tuple[int, ...]:
    """GetDenseTensorShape: the sizes of the first element at each level of nesting."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _fill(value: Any, datatype: int, shape: tuple[int, ...], out: list) -> None:
    """FillTensorProto: every leaf of ``value`` into ``out``, checked against ``shape`` and the dtype, in order."""
    conversion = CONVERSIONS.get(datatype)
    if _fill_rectangular(value, conversion, shape, out):
        return
    rank = len(shape)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            _add_value(item, level, rank, datatype, conversion, out)
            continue
        if level >= rank:
            raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise invalid_argument(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: {shape[level]}"
            )
        if level == rank - 1 and conversion is not None:
            leaves = item
            if conversion.dtype.kind != "O" and all(map(conversion.accepts, leaves)):
                out.extend(leaves)  # the common case, checked in one pass
                continue
            for leaf in leaves:
                if isinstance(leaf, list):
                    raise invalid_argument(f"Encountered list at unexpected level: {rank} expected < {rank}")
                _add_value(leaf, rank, rank, datatype, conversion, out)
            continue
        stack.extend((element, level + 1) for element in reversed(item))


def _fill_rectangular(value: Any, conversion: Conversion | None, shape: tuple[int, ...], out: list) -> bool:
    """The common case at numpy's speed: a big tensor of the right shape whose every value its dtype takes.

    False (``out`` untouched) for anything else, which the walk then checks value by value.
    """
    if conversion is None or not conversion.kinds or len(shape) < 2 or math.prod(shape) < 4096:
        return False
    try:
        grid = np.array(value, dtype=object)
    except ValueError:  # ragged
        return False
    if grid.shape != shape:
        return False
    flat = grid.ravel().tolist()
    if not set(map(type, flat)) <= conversion.kinds:
        return False
    if conversion.bounds is not None and not conversion.bounds[0] <= min(flat) <= max(flat) <= conversion.bounds[1]:
        return False
    out.extend(flat)
    return True


def _add_value(value: Any, level: int, rank: int, datatype: int, conversion: Conversion | None, out: list) -> None:
    if level != rank:
        raise invalid_argument(
            f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
            f"Expected at level: {rank}"
        )
    if isinstance(value, JsonObject):
        if datatype != types_pb2.DT_STRING:
            raise type_error(value, datatype)
        out.append(decode_base64(value))
        return
    if conversion is None:
        raise ServingStatus(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {debug_string(value)} to type: {data_type_string(datatype)}",
        )
    if not conversion.accepts(value):
        raise type_error(value, datatype)
    out.append(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)


def _check_rank(shape: tuple[int, ...]) -> None:
    """TF takes up to 254 dimensions, but no array here can hold more than MAX_RANK."""
    if len(shape) > tensors.MAX_RANK:
        raise invalid_argument(
            f"Shape {_shape_text(shape)} has too many dimensions: {len(shape)}, "
            f"at most {tensors.MAX_RANK} are supported"
        )


def _tensor(value: Any, datatype: int) -> tuple[tuple[int, ...], list]:
    shape = _dense_shape(value)
    _check_rank(shape)
    values: list = []
    _fill(value, datatype, shape, values)
    return shape, values


def _array(datatype: int, shape: tuple[int, ...], values: list) -> np.ndarray:
    conversion = CONVERSIONS.get(datatype)
    if conversion is None:  # no value was there to convert (empty lists): an empty tensor of the signature's dtype
        try:
            return np.empty(shape, dtype=tensors.numpy_dtype(datatype))
        except BadInput:
            raise ServingStatus(
                grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: [] to type: {data_type_string(datatype)}"
            ) from None
    return values_array(values, conversion, shape)


def _status_text(status: ServingStatus) -> str:
    """absl::Status::ToString(): "<CODE>: <message>"."""
    return f"{status.status.name}: {status.message}"


def _from_instances(instances: list, types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: one tensor per input, the instances stacked on a new first dimension."""
    first = instances[0]
    if not isinstance(first, JsonObject) and len(types) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )

    def is_element_object(value: Any) -> bool:
        return isinstance(value, JsonObject) and not is_base64_object(value)

    named = is_element_object(first)
    names = sorted(types)
    shapes: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, int] = {}
    values: dict[str, list] = {}

    def add(item: Any, name: str) -> None:
        """AddInstanceItem."""
        if name not in types:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        _check_rank((len(instances), *shape))  # the instances are stacked on a first dimension
        collected: list = []
        _fill(item, types[name], shape, collected)
        values.setdefault(name, []).extend(collected)
        size = len(collected)
        if name not in sizes:
            sizes[name], shapes[name] = size, shape
        elif sizes[name] != size:
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {size}")
        elif shapes[name] != shape:
            raise invalid_argument(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}")

    for count, element in enumerate(instances):
        if named:
            if not is_element_object(element):
                raise invalid_argument(f"Expecting object but got list at item {count} of input list")
            keys = set()
            for name, item in element:
                keys.add(name)
                try:
                    add(item, name)
                except ServingStatus as exc:
                    raise invalid_argument(
                        f"Failed to process element: {count} key: {name} of 'instances' list. "
                        f"Error: {_status_text(exc)}"
                    ) from None
            if keys != set(types):
                raise invalid_argument(
                    f"Failed to process element: {count} of 'instances' list. JSON object: {debug_string(element)} "
                    f"keys must be equal to: {','.join(names)}"
                )
        else:
            if is_element_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {count} of input list")
            try:
                add(element, names[0])
            except ServingStatus as exc:
                raise invalid_argument(
                    f"Failed to process element: {count} of 'instances' list. Error: {_status_text(exc)}"
                ) from None
    return {name: _array(types[name], (len(instances), *shapes[name]), values[name]) for name in sorted(values)}


def _from_inputs(inputs: Any, types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one value (a single input) or an object of one value per input."""
    if not isinstance(inputs, JsonObject) or is_base64_object(inputs):
        if len(types) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        (name,) = types
        shape, values = _tensor(inputs, types[name])
        return {name: _array(types[name], shape, values)}
    arrays = {}
    for name in sorted(types):
        item = inputs.find(name, _MISSING)
        if item is _MISSING:
            raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
        shape, values = _tensor(item, types[name])
        arrays[name] = _array(types[name], shape, values)
    return arrays


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


# -- classify and regress requests -------------------------------------------------------------------------


def examples_input(doc: Any) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: the signature name and the ``Input`` of tf.Examples."""
    name = signature_name(doc)
    request_input = input_pb2.Input()
    context = doc.find("context", _MISSING)
    if context is not _MISSING:
        _example(context, request_input.example_list_with_context.context)
    examples = doc.find("examples", _MISSING)
    if examples is _MISSING:
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    listed = (
        request_input.example_list_with_context if context is not _MISSING else request_input.example_list
    ).examples
    for example in examples:
        _example(example, listed.add())
    return name, request_input


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _example(value: Any, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject: one feature per member, its kind chosen by its first value."""
    if not isinstance(value, JsonObject):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value:
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)  # a repeated name: the last one stays


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature."""
    if value is True or value is False:
        kind, item = "int64_list", int(value)
    elif isinstance(value, JsonObject):
        if not is_base64_object(value):
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: Object")
        kind, item = "bytes_list", None
    elif isinstance(value, str):
        kind, item = "bytes_list", value.encode("utf-8", "surrogateescape")
    elif isinstance(value, float):
        kind, item = "float_list", value
    elif isinstance(value, int):
        kind, item = "int64_list", value
    else:
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[current]}")
    if kind == "bytes_list" and item is None:
        item = decode_base64(value)
    if kind == "int64_list" and item > INT64[1]:
        raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    if kind == "float_list":
        with np.errstate(over="ignore"):
            item = float(np.float32(item))  # GetFloat()
    getattr(feature, kind).value.append(item)
