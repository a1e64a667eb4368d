"""Classify, Regress and MultiInference over tf.Examples, as TF Serving's classifier.cc and regressor.cc run them.

The request's tf.Examples are serialised into one string tensor; the signature's output tensors
are checked for the shapes and dtypes TF Serving expects, with its messages. The runtime serves
live calls with these, and warmup replays records through them.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import input_pb2

from app.errors import ServingStatus
from app.serving.base import DEFAULT_SIGNATURE
from app.serving.loaded_version import LoadedVersion

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def serialized_examples(input_proto: input_pb2.Input) -> np.ndarray:
    """The request's tf.Examples as one string tensor; with a context, each example is context + example bytes."""
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        examples = [example.SerializeToString() for example in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        listed = input_proto.example_list_with_context
        context = listed.context.SerializeToString()
        # Concatenated serialisations parse as one message with the fields merged (util.cc does the same).
        examples = [context + example.SerializeToString() for example in listed.examples]
    else:
        examples = []
    if not examples:
        raise ServingStatus(_INVALID, "Input is empty.")
    return np.array(examples, dtype=object)


def _find_signature(servable: LoadedVersion, name: str) -> meta_graph_pb2.SignatureDef:
    key = name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(key)
    if signature is None:
        raise ServingStatus(_INVALID, f"No signature was found with the name: {key}")
    return signature


def classification_tensors(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """PreProcessClassification: the input tensor name and the classes/scores output names."""
    if len(signature.inputs) != 1:
        raise ServingStatus(_INVALID, "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise ServingStatus(_INVALID, f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if "inputs" not in signature.inputs:
        raise ServingStatus(_INVALID, f"No classification inputs found in SignatureDef: {_debug(signature)}")
    outputs = [signature.outputs[key].name for key in ("classes", "scores") if key in signature.outputs]
    if not outputs:
        raise ServingStatus(
            _INVALID,
            'Expected classification signature outputs to contain at least one of "classes" or "scores". '
            f"Signature was: {_debug(signature)}",
        )
    return signature.inputs["inputs"].name, outputs


def regression_tensors(signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
    """PreProcessRegression: the input tensor name and the one output name."""
    if len(signature.inputs) != 1:
        raise ServingStatus(_INVALID, "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise ServingStatus(_INVALID, "Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise ServingStatus(_INVALID, f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if "outputs" not in signature.outputs:
        raise ServingStatus(_INVALID, f"No regression outputs found in SignatureDef: {_debug(signature)}")
    return signature.inputs["inputs"].name, [signature.outputs["outputs"].name]


def check_classification(
    signature: meta_graph_pb2.SignatureDef, examples: int, names: list[str], values: list[np.ndarray]
) -> None:
    """PostProcessClassificationResult's checks of the classes and scores tensors."""
    by_name = dict(zip(names, values, strict=True))
    for key, dtype, dtype_name in (("classes", np.object_, "DT_STRING"), ("scores", np.float32, "DT_FLOAT")):
        if key not in signature.outputs:
            continue
        value = by_name[signature.outputs[key].name]
        if value.ndim != 2:
            raise ServingStatus(
                _INVALID, f"Expected Tensor shape: [batch_size num_classes] but got {_shape(value.shape)}"
            )
        if value.dtype != dtype:
            raise ServingStatus(_INVALID, f"Expected {key} Tensor of {dtype_name}. Got: {_dtype_name(value)}")
        if value.shape[0] != examples:
            raise ServingStatus(_INVALID, f"Expected {key} output batch size of {examples}. Got: {value.shape[0]}")
    if "classes" in signature.outputs and "scores" in signature.outputs:
        classes = by_name[signature.outputs["classes"].name]
        scores = by_name[signature.outputs["scores"].name]
        if classes.shape[1] != scores.shape[1]:
            raise ServingStatus(
                _INVALID,
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}",
            )


def check_regression(
    signature: meta_graph_pb2.SignatureDef, examples: int, names: list[str], values: list[np.ndarray]
) -> None:
    """PostProcessRegressionResult's checks of the outputs tensor."""
    value = dict(zip(names, values, strict=True))[signature.outputs["outputs"].name]
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise ServingStatus(
            _INVALID,
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape(value.shape)}",
        )
    if value.shape[0] != examples:
        raise ServingStatus(
            _INVALID, f"Input batch size did not match output batch size: {examples} vs. {value.shape[0]}"
        )
    if value.dtype != np.float32:
        raise ServingStatus(_INVALID, f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(value)}")


def classify(
    servable: LoadedVersion, signature_name: str, input_proto: input_pb2.Input, timeout: float | None = None
) -> dict[str, np.ndarray]:
    """RunClassify (classifier.cc): examples through a classification signature, checked as TF Serving checks
    them; the ``classes`` and/or ``scores`` outputs by key. Serves warmup records and Classify calls alike."""
    signature = _find_signature(servable, signature_name)
    input_name, output_names = classification_tensors(signature)
    examples = serialized_examples(input_proto)
    values = servable.run({input_name: examples}, output_names, timeout)
    check_classification(signature, len(examples), output_names, values)
    keys = [key for key in ("classes", "scores") if key in signature.outputs]
    return dict(zip(keys, values, strict=True))


def regress(
    servable: LoadedVersion, signature_name: str, input_proto: input_pb2.Input, timeout: float | None = None
) -> np.ndarray:
    """RunRegress (regressor.cc): examples through a regression signature; its ``outputs`` tensor, checked."""
    signature = _find_signature(servable, signature_name)
    input_name, output_names = regression_tensors(signature)
    examples = serialized_examples(input_proto)
    values = servable.run({input_name: examples}, output_names, timeout)
    check_regression(signature, len(examples), output_names, values)
    return values[0]


def multi_inference(servable: LoadedVersion, request, timeout: float | None = None) -> list[np.ndarray]:
    """TensorFlowMultiInferenceRunner::Infer: several classify/regress signatures over one set of examples; the
    values of every output tensor the tasks name, in the order of their sorted names."""
    return _multi_inference(servable, request, timeout)[2]


def multi_inference_results(
    servable: LoadedVersion, request, timeout: float | None = None
) -> list[tuple[object, str, dict[str, np.ndarray] | np.ndarray]]:
    """MultiInference as the PredictionService answers it: per task, in order, its model spec, its method name and
    its outputs (``classes``/``scores`` by key for a classification, the ``outputs`` tensor for a regression)."""
    tasks, names, values = _multi_inference(servable, request, timeout)
    by_name = dict(zip(names, values, strict=True))
    results: list[tuple[object, str, dict[str, np.ndarray] | np.ndarray]] = []
    for task, (method, signature) in zip(request.tasks, tasks, strict=True):
        if method == CLASSIFY_METHOD:
            outputs = {
                key: by_name[signature.outputs[key].name] for key in ("classes", "scores") if key in signature.outputs
            }
            results.append((task.model_spec, method, outputs))
        else:
            results.append((task.model_spec, method, by_name[signature.outputs["outputs"].name]))
    return results


def _multi_inference(
    servable: LoadedVersion, request, timeout: float | None
) -> tuple[list[tuple[str, meta_graph_pb2.SignatureDef]], list[str], list[np.ndarray]]:
    model_name = ""
    seen: set[str] = set()
    inputs: set[str] = set()
    outputs: set[str] = set()
    tasks: list[tuple[str, meta_graph_pb2.SignatureDef]] = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise ServingStatus(_INVALID, "Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise ServingStatus(_INVALID, "All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        model_name = task.model_spec.name
        key = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if key in seen:
            raise ServingStatus(_INVALID, f"Duplicate evaluation of signature: {key}")
        seen.add(key)
        signature = servable.signature_defs.get(key)
        if signature is None:
            raise ServingStatus(_INVALID, f"Requested signature not found in model graph: {key}")
        if task.method_name == CLASSIFY_METHOD:
            input_name, output_names = classification_tensors(signature)
        elif task.method_name == REGRESS_METHOD:
            input_name, output_names = regression_tensors(signature)
        else:
            raise ServingStatus(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
        inputs.add(input_name)
        outputs.update(output_names)
        tasks.append((task.method_name, signature))
    examples = serialized_examples(request.input)
    names = sorted(outputs)
    values = servable.run(dict.fromkeys(sorted(inputs), examples), names, timeout)
    for method, signature in tasks:
        check = check_classification if method == CLASSIFY_METHOD else check_regression
        check(signature, len(examples), names, values)
    return tasks, names, values


def _debug(signature: meta_graph_pb2.SignatureDef) -> str:
    return text_format.MessageToString(signature)


def _shape(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _dtype_name(value: np.ndarray) -> str:
    datatype = tf.dtypes.as_dtype(value.dtype).as_datatype_enum
    return types_pb2.DataType.Name(datatype)
