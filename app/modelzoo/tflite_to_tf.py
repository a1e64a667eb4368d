"""Rebuilds a float TFLite model as core TensorFlow ops, so it can live in a SavedModel and expose any tensor.

Only the builtin ops that small vision models such as BlazeFace use are
supported (CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, PAD, MAX_POOL_2D, RESHAPE,
CONCATENATION, RESIZE_BILINEAR, DEPTH_TO_SPACE, DEQUANTIZE, DENSIFY); anything
else fails at construction, naming the op. Weights are read straight from the
flatbuffer (float32, or float16 behind DEQUANTIZE, possibly stored sparse behind
DENSIFY, all folded to dense float32 once) and become ``tf.Variable`` s tracked
by the module, or constants.

    net = TFLiteNetwork(Path("model.tflite"))
    regressors, features = net(images, ["regressors", "activation_11"])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

TensorKey = int | str


class UnsupportedTFLiteModel(ValueError):
    """The TFLite model uses an op, option or tensor type this converter does not rebuild."""


_BUILTIN_NAMES = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}

_NUMPY_TYPES = {
    schema.TensorType.FLOAT32: np.float32,
    schema.TensorType.FLOAT16: np.float16,
    schema.TensorType.INT32: np.int32,
    schema.TensorType.INT64: np.int64,
    schema.TensorType.UINT8: np.uint8,
    schema.TensorType.INT8: np.int8,
}

_PADDING = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}

_ACTIVATIONS: dict[int, Callable[[tf.Tensor], tf.Tensor]] = {
    schema.ActivationFunctionType.NONE: lambda x: x,
    schema.ActivationFunctionType.RELU: tf.nn.relu,
    schema.ActivationFunctionType.RELU_N1_TO_1: lambda x: tf.clip_by_value(x, -1.0, 1.0),
    schema.ActivationFunctionType.RELU6: tf.nn.relu6,
    schema.ActivationFunctionType.TANH: tf.math.tanh,
}

# Filter layouts TF wants, built from TFLite's: conv [out, kh, kw, in] -> [kh, kw, in, out];
# depthwise [1, kh, kw, in*mult] -> [kh, kw, in, mult] (TFLite's channel order is in-major, like TF's).
_CONV_FILTER = "conv_filter"
_DEPTHWISE_FILTER = "depthwise_filter"
_AS_IS = "as_is"


@dataclass(frozen=True)
class _Op:
    kind: str
    inputs: tuple[int, ...]  # -1 marks an omitted optional input (e.g. no bias)
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorInfo:
    """Name, static shape and TFLite type name of one tensor of the model."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str


class _Graph:
    """The parsed subgraph: tensors, ops in execution order and constants. A plain object on purpose:
    tf.Module would wrap dict and list attributes for checkpointing, and these are not state to save."""

    def __init__(self, buffer: bytes, subgraph: int) -> None:
        root = schema.Model.GetRootAs(buffer, 0)
        if subgraph >= root.SubgraphsLength():
            raise UnsupportedTFLiteModel(f"model has {root.SubgraphsLength()} subgraphs, no subgraph {subgraph}")
        graph = root.Subgraphs(subgraph)

        self.tensors = tuple(_tensor_info(graph, i) for i in range(graph.TensorsLength()))
        self.by_name: dict[str, list[int]] = {}
        for info in self.tensors:
            self.by_name.setdefault(info.name, []).append(info.index)
        self.inputs = tuple(int(i) for i in graph.InputsAsNumpy())
        self.outputs = tuple(int(i) for i in graph.OutputsAsNumpy())
        if len(self.inputs) != 1:
            raise UnsupportedTFLiteModel(f"only single-input models are supported, got {len(self.inputs)}")

        opcodes = [_builtin_code(root.OperatorCodes(i)) for i in range(root.OperatorCodesLength())]
        raw_ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        unsupported = sorted({_op_name(opcodes[op.OpcodeIndex()]) for op in raw_ops} - set(_BUILDERS))
        if unsupported:
            raise UnsupportedTFLiteModel(f"unsupported TFLite ops: {', '.join(unsupported)}")

        # Constant tensors as numpy; a DEQUANTIZE of a constant (float16 weights) is folded here once.
        self.constants: dict[int, np.ndarray] = {}
        for info in self.tensors:
            raw_tensor = graph.Tensors(info.index)
            data = _buffer_data(root, buffer, raw_tensor.Buffer())
            if data is not None:
                self.constants[info.index] = _decode_constant(info, data, raw_tensor.Sparsity())
        ops: list[_Op] = []
        for raw in raw_ops:
            op = _parse_op(_op_name(opcodes[raw.OpcodeIndex()]), raw)
            if op.kind == "DENSIFY":
                # Sparse tensors are constants, decoded dense above: the op only hands them on.
                if op.inputs[0] not in self.constants:
                    raise UnsupportedTFLiteModel(f"DENSIFY of computed tensor {self.tensors[op.inputs[0]].name!r}")
                self.constants[op.outputs[0]] = self.constants[op.inputs[0]]
                continue
            if op.kind == "DEQUANTIZE" and self.tensors[op.inputs[0]].dtype != "FLOAT16":
                # int8/uint8 DEQUANTIZE needs scales and zero points: a quantized model, not rebuilt here.
                source = self.tensors[op.inputs[0]]
                raise UnsupportedTFLiteModel(f"DEQUANTIZE of {source.dtype} tensor {source.name!r}")
            if op.kind == "DEQUANTIZE" and op.inputs[0] in self.constants:
                self.constants[op.outputs[0]] = self.constants[op.inputs[0]].astype(np.float32)
                continue
            ops.append(op)
        # Float models only: every activation (the input and each op's output) must be float32.
        for index in (*self.inputs, *(out for op in ops for out in op.outputs)):
            if self.tensors[index].dtype != "FLOAT32":
                info = self.tensors[index]
                raise UnsupportedTFLiteModel(f"tensor {info.name!r} is {info.dtype}; only float models are supported")
        self.ops = tuple(ops)
        self.producer = {out: n for n, op in enumerate(self.ops) for out in op.outputs}

        # Float constants feeding ops become weights, in the layout their consumer wants (no transpose
        # at inference). Int constants (paddings, shapes) stay numpy: they are static arguments.
        self.weight_layouts: dict[int, tuple[str, int]] = {}
        for op in self.ops:
            for position, index in enumerate(op.inputs):
                if index in self.constants and self.constants[index].dtype == np.float32:
                    layout = (_weight_layout(op, position), self.channels(op.inputs[0]))
                    if self.weight_layouts.setdefault(index, layout)[0] != layout[0]:
                        raise UnsupportedTFLiteModel(
                            f"weight {self.tensors[index].name!r} is shared by ops that need different layouts"
                        )
        # Position of each weight in TFLiteNetwork.weights.
        self.weight_slots = {index: n for n, index in enumerate(sorted(self.weight_layouts))}

    def channels(self, index: int) -> int:
        shape = self.tensors[index].shape
        return shape[-1] if shape else 0

    def required_ops(self, wanted: Sequence[int]) -> list[_Op]:
        # Walk back from the fetched tensors so an intermediate fetch runs only the ops it depends on.
        needed: set[int] = set()
        stack = [self.producer[i] for i in wanted if i in self.producer]
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            stack.extend(self.producer[i] for i in self.ops[n].inputs if i in self.producer)
        return [op for n, op in enumerate(self.ops) if n in needed]


class TFLiteNetwork(tf.Module):
    """A TFLite subgraph (float model, one input) rebuilt as TF ops; call it on an NHWC float32 tensor."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        weights_as_variables: bool = True,
        subgraph: int = 0,
        any_batch: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        graph = _Graph(model if isinstance(model, bytes) else Path(model).read_bytes(), subgraph)
        input_shape = graph.tensors[graph.inputs[0]].shape
        if any_batch and (not input_shape or input_shape[0] != 1):
            raise UnsupportedTFLiteModel(f"any_batch needs a model built for batch 1; its input is {input_shape}")
        # A model converted for batch 1 spells that 1 into its reshapes; with any_batch they take -1
        # there instead, so a batch of images flows through (every other supported op is batch-agnostic).
        self.any_batch = any_batch
        weights: list[tf.Variable | tf.Tensor] = []
        for index in graph.weight_slots:
            layout, in_channels = graph.weight_layouts[index]
            value = _to_layout(graph.constants[index], layout, in_channels)
            weight_name = _variable_name(graph.tensors[index].name)
            weights.append(
                tf.Variable(value, trainable=False, name=weight_name)
                if weights_as_variables
                else tf.constant(value, name=weight_name)
            )
        self._graph = graph
        # A list attribute of a tf.Module: the variables in it are tracked, saved and restored with it.
        self.weights = weights

    @property
    def tensors(self) -> tuple[TensorInfo, ...]:
        """Every tensor of the subgraph, by TFLite index."""
        return self._graph.tensors

    @property
    def input_index(self) -> int:
        """TFLite index of the model's input tensor."""
        return self._graph.inputs[0]

    @property
    def output_indices(self) -> tuple[int, ...]:
        """TFLite indices of the model's outputs, in the model's order."""
        return self._graph.outputs

    def tensor_index(self, key: TensorKey) -> int:
        """The TFLite tensor index for a tensor index or (unique) tensor name."""
        tensors = self._graph.tensors
        if isinstance(key, int | np.integer):
            if not 0 <= key < len(tensors):
                raise KeyError(f"no tensor {key}; the model has {len(tensors)}")
            return int(key)
        found = self._graph.by_name.get(key, [])
        if len(found) != 1:
            raise KeyError(f"tensor name {key!r} matches {len(found)} tensors")
        return found[0]

    def __call__(self, images: tf.Tensor, outputs: Sequence[TensorKey] | None = None) -> list[tf.Tensor]:
        """Run the network on float32 NHWC ``images``; return the requested tensors (default: the outputs)."""
        wanted = [self.tensor_index(k) for k in (outputs if outputs is not None else self.output_indices)]
        values: dict[int, tf.Tensor] = {self.input_index: tf.convert_to_tensor(images, tf.float32)}
        for op in self._graph.required_ops(wanted):
            args = [None if i < 0 else self._value(i, values) for i in op.inputs]
            results = _BUILDERS[op.kind](self, op, args)
            for index, result in zip(op.outputs, results, strict=True):
                values[index] = result
        return [self._value(i, values) for i in wanted]

    def _value(self, index: int, values: dict[int, tf.Tensor]) -> tf.Tensor:
        if index in values:
            return values[index]
        if index in self._graph.weight_slots:
            return tf.convert_to_tensor(self.weights[self._graph.weight_slots[index]])
        if index in self._graph.constants:
            return tf.constant(self._graph.constants[index])
        raise KeyError(f"tensor {index} ({self.tensors[index].name}) is neither computed nor constant")

    def _static(self, index: int) -> np.ndarray | None:
        """A constant's numpy value (shapes, paddings), or None if it is computed at run time."""
        return self._graph.constants.get(index)

    def _channels(self, index: int) -> int:
        return self._graph.channels(index)

    def _filter(self, op: _Op, position: int, value: tf.Tensor) -> tf.Tensor:
        """A conv filter in TF layout: pre-arranged if it is a weight, rearranged in the graph otherwise."""
        if op.inputs[position] in self._graph.weight_slots:
            return value
        return _to_layout_tf(value, _weight_layout(op, position), self._channels(op.inputs[0]))


def _conv_2d(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    x, w, b = [*args, None][:3]
    o = op.options
    y = tf.nn.conv2d(
        x,
        net._filter(op, 1, w),
        strides=[1, o["stride_h"], o["stride_w"], 1],
        padding=o["padding"],
        dilations=[1, o["dilation_h"], o["dilation_w"], 1],
    )
    if b is not None:
        y = _add_bias(y, b)
    return [_ACTIVATIONS[o["activation"]](y)]


def _add_bias(y: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
    # A broadcasting AddV2, not BiasAdd: with oneDNN on (TF's x86 default), grappler's remapper fuses
    # Conv2D+BiasAdd+Add into _FusedConv2D, which segfaults (TF 2.21) when the residual comes from a Pad,
    # as in BlazeFace's channel-padded skip connections. The sum is the same.
    return tf.add(y, bias)


def _depthwise_conv_2d(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    x, w, b = [*args, None][:3]
    o = op.options
    in_channels = net.tensors[op.inputs[0]].shape[-1]
    out_channels = net.tensors[op.inputs[1]].shape[-1]
    multiplier = out_channels // in_channels if in_channels > 0 else 0
    # Some converters leave depth_multiplier at 0: the filter shape decides, the option only cross-checks.
    if multiplier < 1 or out_channels != in_channels * multiplier or o["depth_multiplier"] not in (0, multiplier):
        raise UnsupportedTFLiteModel(
            f"DEPTHWISE_CONV_2D with {in_channels} input channels, filter of {out_channels} "
            f"and depth_multiplier {o['depth_multiplier']} is inconsistent"
        )
    y = tf.nn.depthwise_conv2d(
        x,
        net._filter(op, 1, w),
        strides=[1, o["stride_h"], o["stride_w"], 1],
        padding=o["padding"],
        dilations=[o["dilation_h"], o["dilation_w"]],
    )
    if b is not None:
        y = _add_bias(y, b)
    return [_ACTIVATIONS[o["activation"]](y)]


def _add(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    return [_ACTIVATIONS[op.options["activation"]](tf.add(args[0], args[1]))]


def _relu(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    return [tf.nn.relu(args[0])]


def _pad(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    paddings = net._static(op.inputs[1])
    return [tf.pad(args[0], paddings if paddings is not None else args[1])]


def _max_pool_2d(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    o = op.options
    y = tf.nn.max_pool2d(
        args[0],
        ksize=[1, o["filter_h"], o["filter_w"], 1],
        strides=[1, o["stride_h"], o["stride_w"], 1],
        padding=o["padding"],
    )
    return [_ACTIVATIONS[o["activation"]](y)]


def _reshape(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    # The shape input wins over the (older) new_shape option when both exist, as in the TFLite kernel.
    if len(op.inputs) > 1 and op.inputs[1] >= 0:
        static = net._static(op.inputs[1])
        shape = static.astype(np.int64).tolist() if static is not None else args[1]
    elif op.options.get("new_shape") is not None:
        shape = list(op.options["new_shape"])
    else:
        shape = list(net.tensors[op.outputs[0]].shape)
    if net.any_batch and isinstance(shape, list) and shape and shape[0] == 1:
        # The output's static shape (batch 1) names every other dimension, even where the target has a -1.
        shape = [-1, *net.tensors[op.outputs[0]].shape[1:]]
    return [tf.reshape(args[0], shape)]


def _concatenation(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    o = op.options
    return [_ACTIVATIONS[o["activation"]](tf.concat(args, axis=o["axis"]))]


def _resize_bilinear(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    size = net._static(op.inputs[1])
    o = op.options
    # The raw op: tf.image.resize has no align_corners, and the v1 wrapper is deprecated.
    resized = tf.raw_ops.ResizeBilinear(
        images=args[0],
        size=tf.constant(size, tf.int32) if size is not None else args[1],
        align_corners=o["align_corners"],
        half_pixel_centers=o["half_pixel_centers"],
    )
    return [resized]


def _depth_to_space(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    # TFLite's DEPTH_TO_SPACE is TF's NHWC one (depth-column-row order).
    return [tf.nn.depth_to_space(args[0], op.options["block_size"])]


def _densify(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    # Only constant inputs reach a graph (folded at parse time); kept so the op counts as supported.
    return [args[0]]


def _dequantize(net: TFLiteNetwork, op: _Op, args: list[Any]) -> list[tf.Tensor]:
    # Only float16 sources get this far (checked at parse time); constant ones were folded there.
    return [tf.cast(args[0], tf.float32)]


_BUILDERS: dict[str, Callable[[TFLiteNetwork, _Op, list[Any]], list[tf.Tensor]]] = {
    "CONV_2D": _conv_2d,
    "DEPTHWISE_CONV_2D": _depthwise_conv_2d,
    "ADD": _add,
    "RELU": _relu,
    "PAD": _pad,
    "MAX_POOL_2D": _max_pool_2d,
    "RESHAPE": _reshape,
    "CONCATENATION": _concatenation,
    "RESIZE_BILINEAR": _resize_bilinear,
    "DEPTH_TO_SPACE": _depth_to_space,
    "DEQUANTIZE": _dequantize,
    "DENSIFY": _densify,
}


def _window(o: Any, kind: str) -> dict[str, Any]:
    """The options every sliding-window op (conv, depthwise conv, pool) has in common."""
    return {
        "padding": _padding(o.Padding(), kind),
        "stride_h": o.StrideH(),
        "stride_w": o.StrideW(),
        "activation": _activation(o.FusedActivationFunction(), kind),
    }


def _parse_op(kind: str, raw: Any) -> _Op:
    inputs = tuple(int(i) for i in raw.InputsAsNumpy()) if raw.InputsLength() else ()
    outputs = tuple(int(i) for i in raw.OutputsAsNumpy())
    options: dict[str, Any] = {}
    if kind == "CONV_2D":
        o = _options(raw, schema.Conv2DOptions, kind)
        options = {**_window(o, kind), "dilation_h": o.DilationHFactor(), "dilation_w": o.DilationWFactor()}
    elif kind == "DEPTHWISE_CONV_2D":
        o = _options(raw, schema.DepthwiseConv2DOptions, kind)
        options = {
            **_window(o, kind),
            "dilation_h": o.DilationHFactor(),
            "dilation_w": o.DilationWFactor(),
            "depth_multiplier": o.DepthMultiplier(),
        }
    elif kind == "MAX_POOL_2D":
        o = _options(raw, schema.Pool2DOptions, kind)
        options = {**_window(o, kind), "filter_h": o.FilterHeight(), "filter_w": o.FilterWidth()}
    elif kind == "ADD":
        # ADD's options are optional in the schema; absent means no fused activation.
        o = _options(raw, schema.AddOptions, kind, required=False)
        activation = o.FusedActivationFunction() if o is not None else schema.ActivationFunctionType.NONE
        options = {"activation": _activation(activation, kind)}
    elif kind == "CONCATENATION":
        o = _options(raw, schema.ConcatenationOptions, kind)
        options = {"axis": o.Axis(), "activation": _activation(o.FusedActivationFunction(), kind)}
    elif kind == "RESIZE_BILINEAR":
        o = _options(raw, schema.ResizeBilinearOptions, kind, required=False)
        options = {
            "align_corners": bool(o.AlignCorners()) if o is not None else False,
            "half_pixel_centers": bool(o.HalfPixelCenters()) if o is not None else False,
        }
    elif kind == "DEPTH_TO_SPACE":
        o = _options(raw, schema.DepthToSpaceOptions, kind)
        if o.BlockSize() < 2:
            raise UnsupportedTFLiteModel(f"DEPTH_TO_SPACE with block size {o.BlockSize()}")
        options = {"block_size": o.BlockSize()}
    elif kind == "RESHAPE":
        o = _options(raw, schema.ReshapeOptions, kind, required=False)
        has_shape = o is not None and o.NewShapeLength() > 0
        options = {"new_shape": tuple(int(d) for d in o.NewShapeAsNumpy()) if has_shape else None}
    return _Op(kind, inputs, outputs, options)


def _options(raw: Any, options_type: Any, kind: str, *, required: bool = True) -> Any:
    """The op's builtin options table read as ``options_type``, or None when optional and absent."""
    table = raw.BuiltinOptions()
    found = raw.BuiltinOptionsType()
    if table is None or found == schema.BuiltinOptions.NONE:
        if required:
            raise UnsupportedTFLiteModel(f"{kind} without builtin options")
        return None
    if found != getattr(schema.BuiltinOptions, options_type.__name__):
        raise UnsupportedTFLiteModel(f"{kind} carries builtin options type {found}, not {options_type.__name__}")
    options = options_type()
    options.Init(table.Bytes, table.Pos)
    return options


def _padding(code: int, kind: str) -> str:
    if code not in _PADDING:
        raise UnsupportedTFLiteModel(f"{kind} with unknown padding {code}")
    return _PADDING[code]


def _activation(code: int, kind: str) -> int:
    if code not in _ACTIVATIONS:
        raise UnsupportedTFLiteModel(f"{kind} with unsupported fused activation {code}")
    return code


def _builtin_code(opcode: Any) -> int:
    # Schema v3a split the builtin code in two fields; the larger one is the real code (as TFLite reads it).
    return max(int(opcode.BuiltinCode()), int(opcode.DeprecatedBuiltinCode()))


def _op_name(code: int) -> str:
    return _BUILTIN_NAMES.get(code, f"builtin code {code}")


def _tensor_info(graph: Any, index: int) -> TensorInfo:
    tensor = graph.Tensors(index)
    type_names = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    name = tensor.Name().decode("utf-8") if tensor.Name() else f"tensor_{index}"
    return TensorInfo(index, name, shape, type_names.get(tensor.Type(), str(tensor.Type())))


def _buffer_data(root: Any, model: bytes, buffer_index: int) -> bytes | None:
    if buffer_index <= 0 or buffer_index >= root.BuffersLength():
        return None  # buffer 0 is the shared empty buffer: a computed tensor
    buffer = root.Buffers(buffer_index)
    # Models over 2 GB keep data after the flatbuffer, addressed by offset/size (offset 1 means "none").
    if buffer.Offset() > 1:
        return model[buffer.Offset() : buffer.Offset() + buffer.Size()]
    if buffer.DataLength() == 0:
        return None
    return buffer.DataAsNumpy().tobytes()


def _decode_constant(info: TensorInfo, data: bytes, sparsity: Any = None) -> np.ndarray:
    type_code = getattr(schema.TensorType, info.dtype, None)
    if type_code not in _NUMPY_TYPES:
        raise UnsupportedTFLiteModel(f"constant tensor {info.name!r} has unsupported type {info.dtype}")
    # TFLite stores little-endian data.
    dtype = np.dtype(_NUMPY_TYPES[type_code]).newbyteorder("<")
    array = np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="))
    if sparsity is not None:
        return _densified(info, array, sparsity)
    if array.size != int(np.prod(info.shape, dtype=np.int64)):
        raise UnsupportedTFLiteModel(f"tensor {info.name!r} holds {array.size} values for shape {info.shape}")
    return array.reshape(info.shape)


def _index_vector(metadata: Any, which: str, name: str) -> np.ndarray:
    """A sparse dimension's array_segments or array_indices (a union of int32/uint16/uint8 vectors)."""
    kinds = {
        schema.SparseIndexVector.Int32Vector: schema.Int32Vector,
        schema.SparseIndexVector.Uint16Vector: schema.Uint16Vector,
        schema.SparseIndexVector.Uint8Vector: schema.Uint8Vector,
    }
    kind = getattr(metadata, f"{which}Type")()
    table = getattr(metadata, which)()
    if kind not in kinds or table is None:
        raise UnsupportedTFLiteModel(f"sparse tensor {name!r} has no readable {which}")
    vector = kinds[kind]()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64) if vector.ValuesLength() else np.zeros(0, np.int64)


def _densified(info: TensorInfo, values: np.ndarray, sparsity: Any) -> np.ndarray:
    """The dense array of a TFLite sparse constant (TACO-style: one dense or CSR level per dimension).

    Levels are walked in the traversal order, outermost first, expanding every stored position
    of a level into the positions of the next; the leaves come out in storage order, so the k-th
    leaf's coordinates receive the k-th stored value (as TFLite's FormatConverter fills them).
    """
    rank = len(info.shape)
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else []
    if sparsity.BlockMapLength() or sorted(order) != list(range(rank)) or sparsity.DimMetadataLength() != rank:
        raise UnsupportedTFLiteModel(f"sparse tensor {info.name!r}: only unblocked sparsity is supported")
    positions = np.zeros(1, np.int64)
    coords = np.zeros((1, rank), np.int64)
    for level, dim in enumerate(order):
        metadata = sparsity.DimMetadata(level)
        if metadata.Format() == schema.DimensionType.DENSE:
            size = metadata.DenseSize()
            positions = (positions[:, None] * size + np.arange(size)).ravel()
            coords = np.repeat(coords, size, axis=0)
            coords[:, dim] = np.tile(np.arange(size), len(coords) // max(size, 1))
        else:
            segments = _index_vector(metadata, "ArraySegments", info.name)
            indices = _index_vector(metadata, "ArrayIndices", info.name)
            starts, ends = segments[positions], segments[positions + 1]
            counts = ends - starts
            coords = np.repeat(coords, counts, axis=0)
            positions = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)] or [[]])
            positions = positions.astype(np.int64)
            coords[:, dim] = indices[positions]
    if len(coords) != values.size:
        raise UnsupportedTFLiteModel(f"sparse tensor {info.name!r} lists {len(coords)} positions for {values.size}")
    dense = np.zeros(info.shape, values.dtype)
    dense[tuple(coords.T)] = values
    return dense


def _weight_layout(op: _Op, position: int) -> str:
    if position == 1 and op.kind == "CONV_2D":
        return _CONV_FILTER
    if position == 1 and op.kind == "DEPTHWISE_CONV_2D":
        return _DEPTHWISE_FILTER
    return _AS_IS


def _to_layout(value: np.ndarray, layout: str, in_channels: int) -> np.ndarray:
    if layout == _CONV_FILTER:
        return np.ascontiguousarray(value.transpose(1, 2, 3, 0))
    if layout == _DEPTHWISE_FILTER:
        _, kh, kw, channels = value.shape
        return value.reshape(kh, kw, in_channels, channels // in_channels)
    return value


def _to_layout_tf(value: tf.Tensor, layout: str, in_channels: int) -> tf.Tensor:
    if layout == _CONV_FILTER:
        return tf.transpose(value, [1, 2, 3, 0])
    if layout == _DEPTHWISE_FILTER:
        shape = tf.shape(value)
        return tf.reshape(value, [shape[1], shape[2], in_channels, shape[3] // in_channels])
    return value


def _variable_name(tensor_name: str) -> str:
    # Variable names must be valid scope names (converters join fused names with ';') and read better
    # without TFLite's suffixes.
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", tensor_name.replace("_dequantize", ""))
    return name if name[:1].isalnum() else f"weight{name}"
