"""TF Serving's gRPC API (PredictionService, ModelService) over the embedded runtime, on one port.

The server answers as ``tensorflow_model_server`` 2.20 does. It serves SavedModels the way TF
Serving does (TF1 SavedModelBundle loading, runs by SignatureDef tensor names, version policies,
labels checked before a config applies, availability kept through a failed load with retries,
warmup rules, polling; :class:`app.serving.runtime.ModelRuntime` does that part, see its
docstring) and answers on the wire with TF Serving's messages and status codes, cut past 1024
bytes with "...TRUNCATED" as ``ToGRPCStatus`` does: NOT_FOUND for an unknown servable or version,
INVALID_ARGUMENT for a wrong input name or dtype or an unknown label, FAILED_PRECONDITION for an
unknown signature or a config whose label names a version that is not available. Request tensors
are parsed only once the servable and signature are found, with TensorFlow's own
``make_ndarray``, not the gateway's codec, so the two are checked against each other wherever the
gateway talks to this server. Output tensors go out the way TF Serving sends them by default:
``Tensor::AsProtoField``, every value in the dtype's ``*_val`` field (ServerCore's
``predict_response_tensor_serialization_option`` defaults to ``kAsProtoField`` "for backward
compatibility"); ``response_form="content"`` answers with ``tf.make_tensor_proto`` instead
(``tensor_content``, as ``kAsProtoContent`` roughly would).

MultiInference runs the classify/regress signatures of its tasks over one set of examples
(multi_inference_helper.cc: the servable the first task names). With ``metrics``, Predict, Classify
and Regress are counted and timed as TF Serving counts them (``app.model_server.monitoring``).

``interceptors`` are gRPC server interceptors run before every call (the tests inject faults
with one, ``tests/support/double.py``). ``options`` are more gRPC server arguments
(``--grpc_channel_arguments``); ``unix_socket`` adds a listening socket (``--grpc_socket_path``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
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
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from app.errors import ServingStatus, wire_message
from app.model_server.monitoring import ServingMetrics
from app.serving.base import fill_classification_result, fill_regression_result
from app.serving.examples import CLASSIFY_METHOD
from app.serving.model_config import ModelConfigError, parse_model_config
from app.serving.runtime import ModelRuntime
from app.serving.tensors import row_of_dtype

_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODE = {code.name: code.value[0] for code in grpc.StatusCode}
MAX_MESSAGE_BYTES = 2**31 - 1
STOP_GRACE = 2.0  # seconds a stopping server lets calls in flight finish
DEFAULT_MAX_THREADS = 16


class ModelServer:
    """TF Serving's gRPC API on ``host:port`` (0: a free port). Several may share one runtime (one set of models)."""

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        runtime: ModelRuntime | None = None,
        poll_interval: float = 0.2,
        host: str = "127.0.0.1",
        port: int | None = 0,
        name: str = "serving",
        response_form: str = "field",
        max_threads: int = DEFAULT_MAX_THREADS,
        interceptors: Sequence[grpc.ServerInterceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
        unix_socket: str | None = None,
        metrics: ServingMetrics | None = None,
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
        self.port = port
        self.max_threads = max_threads
        self.interceptors = list(interceptors)
        self.options = list(options)
        self.unix_socket = unix_socket
        self.metrics = metrics
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            return f"unix:{self.unix_socket}"
        return f"{self.host}:{self.port}"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ModelServer:
        if self._server is not None:
            return self
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_threads, thread_name_prefix=f"model-server-{self.name}"),
            interceptors=self.interceptors,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *self.options,
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        if self.port is not None:
            bound = _bind(server, f"{self.host}:{self.port}")
            self.port = bound
        if self.unix_socket:
            _bind(server, f"unix:{self.unix_socket}")
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

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _bind(server: grpc.Server, address: str) -> int:
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if bound == 0:
        raise RuntimeError(f"could not bind {address} (in use, or not an address of this host)")
    return bound


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
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def _recorded(self, api: str, name: str, started: float, code: grpc.StatusCode) -> None:
        """RecordModelRequestCount and RecordRequestLatency, as PredictionServiceImpl calls them."""
        if self.server.metrics is not None:
            self.server.metrics.request(name, api, "GRPC", code.name, time.perf_counter() - started)

    def Predict(self, request, context):
        started = time.perf_counter()
        if not request.HasField("model_spec"):
            self._recorded("Predict", "", started, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, label = _version_and_label(spec)
        try:
            # The TensorProtos go in unparsed: TF Serving finds the servable and signature first (predict_impl.cc).
            served, outputs = self.server.runtime.predict(
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
            self._recorded("Predict", spec.name, started, exc.status)
            _abort(context, exc)
        if self.server.metrics is not None:
            self.server.metrics.runtime(spec.name, "Predict", time.perf_counter() - started)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for alias, value in outputs.items():
            if self.server.response_form == "field":
                _as_proto_field(value, response.outputs[alias])
            else:
                response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        self._recorded("Predict", spec.name, started, grpc.StatusCode.OK)
        return response

    def Classify(self, request, context):
        """TensorflowClassificationServiceImpl::Classify: the runtime's classifier.cc checks, MakeModelSpec's answer."""
        return self._examples_call(
            "Classify", request, context, self.server.runtime.classify,
            classification_pb2.ClassificationResponse(), fill_classification_result,
        )  # fmt: skip

    def Regress(self, request, context):
        """TensorflowRegressionServiceImpl::Regress, likewise."""
        return self._examples_call(
            "Regress", request, context, self.server.runtime.regress,
            regression_pb2.RegressionResponse(), fill_regression_result,
        )  # fmt: skip

    def _examples_call(self, api: str, request, context, run: Callable[..., Any], response, fill):
        """One Classify or Regress call: ``run`` is the runtime's, ``fill`` writes its outputs into ``response``."""
        started = time.perf_counter()
        if not request.HasField("model_spec"):
            self._recorded(api, "", started, grpc.StatusCode.INVALID_ARGUMENT)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, label = _version_and_label(spec)
        try:
            served, outputs = run(
                spec.name, request.input, version=version, label=label,
                signature=spec.signature_name or "serving_default", timeout=context.time_remaining(),
            )  # fmt: skip
        except ServingStatus as exc:
            self._recorded(api, spec.name, started, exc.status)
            _abort(context, exc)
        if self.server.metrics is not None:
            self.server.metrics.runtime(spec.name, api, time.perf_counter() - started)
            self.server.metrics.examples(spec.name, _example_count(request.input))
        _answered_spec(response.model_spec, spec, served)
        fill(response.result, outputs)
        self._recorded(api, spec.name, started, grpc.StatusCode.OK)
        return response

    def MultiInference(self, request, context):
        """PredictionServiceImpl::MultiInference: no request metrics (TF Serving records none for it), the
        example count as TensorFlowMultiInferenceRunner records it."""
        try:
            served, results = self.server.runtime.multi_inference(request, timeout=context.time_remaining())
        except ServingStatus as exc:
            _abort(context, exc)
        if self.server.metrics is not None:
            self.server.metrics.examples(request.tasks[0].model_spec.name, _example_count(request.input))
        response = inference_pb2.MultiInferenceResponse()
        for spec, method, outputs in results:
            result = response.results.add()
            if method == CLASSIFY_METHOD:
                fill_classification_result(result.classification_result, outputs)
            else:
                fill_regression_result(result.regression_result, outputs)
            _answered_spec(result.model_spec, spec, served)
        return response

    def GetModelMetadata(self, request, context):
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
            served, signature_defs = self.server.runtime.signature_defs(spec.name, version=version, label=label)
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
    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def GetModelStatus(self, request, context):
        if not request.HasField("model_spec"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        spec = request.model_spec
        version, _ = _version_and_label(spec)
        try:
            statuses = self.server.runtime.status(spec.name, version)
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
        runtime = self.server.runtime
        if request.config.WhichOneof("config") != "model_config_list":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported",
            )
        text = text_format.MessageToString(request.config)
        try:
            config = parse_model_config(
                text,
                path=runtime.config_path or "<ReloadConfigRequest>",
                models_root=runtime.models_root,
                container_prefix=runtime.container_prefix,
                check_paths=False,
            )
            runtime.apply_config(config)
        except ModelConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, wire_message(str(exc)))
        except ServingStatus as exc:
            _abort(context, exc)
        return model_management_pb2.ReloadConfigResponse()


def _example_count(examples) -> int:
    kind = examples.WhichOneof("kind")
    if kind == "example_list":
        return len(examples.example_list.examples)
    if kind == "example_list_with_context":
        return len(examples.example_list_with_context.examples)
    return 0


def reload_request(config_text: str) -> model_management_pb2.ReloadConfigRequest:
    """A ReloadConfigRequest carrying a ModelServerConfig written in text format."""
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
    return request
