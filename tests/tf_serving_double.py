"""TF Serving protocol double: a real gRPC server speaking PredictionService and ModelService on loopback.

It is how the gRPC path is proven here, where no TF Serving binary can run. It
serves SavedModels the way TF Serving does (TF1 SavedModelBundle loading, runs by
SignatureDef tensor names, version policies, labels checked before a config
applies, availability kept through a failed load with retries, warmup rules,
polling; the gateway's ``ModelRuntime`` does that part, see its docstring) and
answers on the wire with TF Serving's messages and status codes, cut past 1024
bytes with "...TRUNCATED" as ``ToGRPCStatus`` does: NOT_FOUND for an unknown
servable or version, INVALID_ARGUMENT for a wrong input name or dtype or an
unknown label, FAILED_PRECONDITION for an unknown signature or a config whose
label names a version that is not available. Request tensors are parsed only
once the servable and signature are found, with TensorFlow's own
``make_ndarray``, not the gateway's codec, so the two are checked against each
other. The server's flags are the runtime's keyword arguments
(``max_load_retries``, ``load_retry_interval``, ``allow_labels_for_unavailable``). Output tensors go
out the way TF Serving sends them by default: ``Tensor::AsProtoField``, every
value in the dtype's ``*_val`` field (ServerCore's
``predict_response_tensor_serialization_option`` defaults to ``kAsProtoField``
"for backward compatibility"); ``response_form="content"`` answers with
``tf.make_tensor_proto`` instead (``tensor_content``, as ``kAsProtoContent``
roughly would).

Fault knobs: ``stop()``, ``start()`` again on the same port, ``delay`` seconds
before each answer (``delays[name]`` before each Predict of one servable only),
``fail_with`` a status code for every call, ``fail_next(n)`` for the next n calls
only, and ``calls`` to count what arrived.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from app.errors import ServingStatus
from app.serving.base import fill_classification_result, fill_regression_result
from app.serving.model_config import ModelConfigError, parse_model_config
from app.serving.runtime import ModelRuntime, wire_message
from app.serving.tensors import row_of_dtype

_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODE = {code.name: code.value[0] for code in grpc.StatusCode}
MAX_MESSAGE_BYTES = 2**31 - 1
STOP_GRACE = 2.0  # seconds a stopping double lets calls in flight finish


class TFServingDouble:
    """One TF Serving replica on 127.0.0.1:<port>. Several may share one runtime (one set of loaded models)."""

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        runtime: ModelRuntime | None = None,
        poll_interval: float = 0.2,
        port: int = 0,
        host: str = "127.0.0.1",
        server_options: Sequence[tuple[str, Any]] = (),
        name: str = "serving",
        response_form: str = "field",
        **runtime_options: Any,
    ) -> None:
        if response_form not in ("field", "content"):
            raise ValueError(f"response_form must be 'field' or 'content', not {response_form!r}")
        if runtime is None:
            if config_path is None:
                raise ValueError("give a config path or a runtime")
            runtime = ModelRuntime(config_path, poll_interval=poll_interval, **runtime_options)
            self._owns_runtime = True
        else:
            self._owns_runtime = False
        self.runtime = runtime
        self.name = name
        self.response_form = response_form
        self.host = host
        self.server_options = tuple(server_options)  # as TF Serving's --grpc_channel_arguments
        self.port = port
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.fail_with: grpc.StatusCode | None = None
        self._fail_next: list[grpc.StatusCode] = []
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> TFServingDouble:
        if self._server is not None:
            return self
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"double-{self.name}"),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *self.server_options,
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        bound = server.add_insecure_port(f"{self.host}:{self.port}")
        if bound == 0:
            raise RuntimeError(f"could not bind {self.host}:{self.port}")
        self.port = bound
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = STOP_GRACE) -> None:
        """Shut down as a model server does: new calls are refused at once (UNAVAILABLE, which clients retry
        elsewhere), calls already in flight are answered, for up to ``grace`` seconds, then cancelled.

        Cancelling in-flight calls at once (``grace=None``) is not what a stopping server looks like to a
        client: a killed process resets its connections (UNAVAILABLE), a shutting-down one drains them.
        """
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> TFServingDouble:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- fault knobs ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a healthy, prompt, running server."""
        with self._lock:
            self.delay, self.fail_with = 0.0, None
            self.delays.clear()
            self._fail_next.clear()
        self.start()

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        with self._lock:
            self._fail_next.extend([code] * count)

    def _enter_call(self, method: str, context: grpc.ServicerContext, servable: str = "") -> None:
        with self._lock:
            self.calls[method] += 1
            injected = self._fail_next.pop(0) if self._fail_next else self.fail_with
            delay = self.delays.get(servable, self.delay)
        if delay:
            time.sleep(delay)
        if injected is not None:
            context.abort(injected, f"{self.name}: injected {injected.name}")


def _abort(context: grpc.ServicerContext, exc: ServingStatus) -> None:
    context.abort(exc.status, wire_message(exc.message))


def _version_and_label(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


def _answered_spec(out, spec, served: int) -> None:
    """MakeModelSpec (servables/tensorflow/util.cc): the name, the signature (the default when none was named) and
    the version that answered."""
    out.name = spec.name
    out.signature_name = spec.signature_name or "serving_default"
    out.version.value = served


def _as_proto_field(value: np.ndarray, proto: tensor_pb2.TensorProto) -> None:
    """Write ``value`` into ``proto`` like TF Serving's ``Tensor::AsProtoField``: shape always, values in ``*_val``."""
    row = row_of_dtype(value.dtype)  # the DTYPES row: which *_val field carries this dtype
    proto.dtype = row.datatype
    proto.tensor_shape.SetInParent()  # C++ mutable_tensor_shape(): present even for a scalar
    for size in value.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = value.ravel()
    if row.field == "half_val":
        flat = flat.view("<u2").astype(np.int32)  # each float16's bit pattern
    getattr(proto, row.field).extend(flat.tolist())


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, double: TFServingDouble) -> None:
        self.double = double

    def Predict(self, request, context):
        self.double._enter_call("Predict", context, request.model_spec.name)
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, label = _version_and_label(spec)
        try:
            # The TensorProtos go in unparsed: TF Serving finds the servable and signature first (predict_impl.cc).
            served, outputs = self.double.runtime.predict(
                spec.name,
                dict(request.inputs),
                version=version,
                label=label,
                signature=spec.signature_name or "serving_default",
                output_filter=list(request.output_filter),
                timeout=context.time_remaining(),
                decode=tf.make_ndarray,
            )
        except ServingStatus as exc:
            _abort(context, exc)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for alias, value in outputs.items():
            if self.double.response_form == "field":
                _as_proto_field(value, response.outputs[alias])
            else:
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def Classify(self, request, context):
        """TensorflowClassificationServiceImpl::Classify: the runtime's classifier.cc checks, MakeModelSpec's answer."""
        return self._examples_call(
            "Classify", request, context, self.double.runtime.classify,
            classification_pb2.ClassificationResponse(), fill_classification_result,
        )  # fmt: skip

    def Regress(self, request, context):
        """TensorflowRegressionServiceImpl::Regress, likewise."""
        return self._examples_call(
            "Regress", request, context, self.double.runtime.regress,
            regression_pb2.RegressionResponse(), fill_regression_result,
        )  # fmt: skip

    def _examples_call(self, method, request, context, run, response, fill):
        """One Classify or Regress call: ``run`` is the runtime's, ``fill`` writes its outputs into ``response``."""
        self.double._enter_call(method, context, request.model_spec.name)
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, label = _version_and_label(spec)
        try:
            served, outputs = run(
                spec.name, request.input, version=version, label=label,
                signature=spec.signature_name or "serving_default", timeout=context.time_remaining(),
            )  # fmt: skip
        except ServingStatus as exc:
            _abort(context, exc)
        _answered_spec(response.model_spec, spec, served)
        fill(response.result, outputs)
        return response

    def GetModelMetadata(self, request, context):
        self.double._enter_call("GetModelMetadata", context)
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        if not request.metadata_field:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != "signature_def":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported")
        version, label = _version_and_label(spec)
        try:
            served, signature_defs = self.double.runtime.signature_defs(spec.name, version=version, label=label)
        except ServingStatus as exc:
            _abort(context, exc)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served
        response.metadata["signature_def"].Pack(signature_map)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, double: TFServingDouble) -> None:
        self.double = double

    def GetModelStatus(self, request, context):
        self.double._enter_call("GetModelStatus", context)
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, _ = _version_and_label(spec)
        try:
            statuses = self.double.runtime.status(spec.name, version)
        except ServingStatus as exc:
            _abort(context, exc)
        response = get_model_status_pb2.GetModelStatusResponse()
        for status in statuses:
            entry = response.model_version_status.add(version=status.version, state=_STATE.Value(status.state))
            entry.status.error_code = _ERROR_CODE.get(status.error_code, 2)
            entry.status.error_message = status.error_message
        return response

    def HandleReloadConfigRequest(self, request, context):
        """ServerCore::ReloadConfig over the wire: a refused config changes nothing and says why."""
        self.double._enter_call("HandleReloadConfigRequest", context)
        runtime = self.double.runtime
        if request.config.WhichOneof("config") != "model_config_list":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported",
            )
        text = text_format.MessageToString(request.config)
        try:
            config = parse_model_config(
                text, path=runtime.config_path, models_root=runtime.models_root, check_paths=False
            )
            runtime.apply_config(config)
        except ModelConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, wire_message(str(exc)))
        except ServingStatus as exc:
            _abort(context, exc)
        return model_management_pb2.ReloadConfigResponse()


def reload_request(config_text: str) -> model_management_pb2.ReloadConfigRequest:
    """A ReloadConfigRequest carrying a ModelServerConfig written in text format."""
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
    return request
