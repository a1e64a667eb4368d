"""TF Serving protocol double: a real gRPC server speaking PredictionService and ModelService on loopback.

It is how the gRPC path is proven here, where no TF Serving binary can run. It
serves SavedModels the way TF Serving does (TF1 SavedModelBundle loading, runs by
SignatureDef tensor names, version policies, labels, polling; the gateway's
``ModelRuntime`` does that part) and answers on the wire with TF Serving's
messages and status codes: NOT_FOUND for an unknown servable or version,
INVALID_ARGUMENT for a wrong input name or dtype or an unknown label,
FAILED_PRECONDITION for a label moved onto a version that is not loaded.
Tensors are decoded and encoded with TensorFlow's own ``make_ndarray`` /
``make_tensor_proto``, not the gateway's codec, so the two are checked against
each other.

Fault knobs: ``stop()``, ``start()`` again on the same port, ``delay`` seconds
before each answer, ``fail_with`` a status code for every call, ``fail_next(n)``
for the next n calls only, and ``calls`` to count what arrived.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from app.errors import ServingStatus
from app.serving.model_config import ModelConfigError, parse_model_config
from app.serving.runtime import ModelRuntime

_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODE = {code.name: code.value[0] for code in grpc.StatusCode}
MAX_MESSAGE_BYTES = 2**31 - 1


class TFServingDouble:
    """One TF Serving replica on 127.0.0.1:<port>. Several may share one runtime (one set of loaded models)."""

    def __init__(
        self,
        config_path: str | Path | None = None,
        *,
        runtime: ModelRuntime | None = None,
        poll_interval: float = 0.2,
        port: int = 0,
        name: str = "serving",
    ) -> None:
        if runtime is None:
            if config_path is None:
                raise ValueError("give a config path or a runtime")
            runtime = ModelRuntime(config_path, poll_interval=poll_interval)
            self._owns_runtime = True
        else:
            self._owns_runtime = False
        self.runtime = runtime
        self.name = name
        self.port = port
        self.delay = 0.0
        self.fail_with: grpc.StatusCode | None = None
        self._fail_next: list[grpc.StatusCode] = []
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

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
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_PredictionService(self), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if bound == 0:
            raise RuntimeError(f"could not bind 127.0.0.1:{self.port}")
        self.port = bound
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
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
            self._fail_next.clear()
        self.start()

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        with self._lock:
            self._fail_next.extend([code] * count)

    def _enter_call(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls[method] += 1
            injected = self._fail_next.pop(0) if self._fail_next else self.fail_with
        if self.delay:
            time.sleep(self.delay)
        if injected is not None:
            context.abort(injected, f"{self.name}: injected {injected.name}")


def _abort(context: grpc.ServicerContext, exc: ServingStatus) -> None:
    context.abort(exc.status, exc.message)


def _version_and_label(spec) -> tuple[int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.version.value, None
    if choice == "version_label":
        return None, spec.version_label
    return None, None


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, double: TFServingDouble) -> None:
        self.double = double

    def Predict(self, request, context):
        self.double._enter_call("Predict", context)
        spec = request.model_spec
        if not spec.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        inputs = {}
        for alias, proto in request.inputs.items():
            try:
                inputs[alias] = tf.make_ndarray(proto)
            except (TypeError, ValueError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias} ({exc})")
        version, label = _version_and_label(spec)
        try:
            served, outputs = self.double.runtime.predict(
                spec.name,
                inputs,
                version=version,
                label=label,
                signature=spec.signature_name or "serving_default",
                output_filter=list(request.output_filter),
                timeout=context.time_remaining(),
            )
        except ServingStatus as exc:
            _abort(context, exc)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = served
        response.model_spec.signature_name = spec.signature_name or "serving_default"
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        self.double._enter_call("GetModelMetadata", context)
        spec = request.model_spec
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Metadata field {','.join(fields) or '(none)'} is not supported",
            )
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
        self.double._enter_call("HandleReloadConfigRequest", context)
        runtime = self.double.runtime
        text = text_format.MessageToString(request.config)
        try:
            config = parse_model_config(text, path=runtime.config_path, models_root=runtime.models_root)
            runtime.apply_config(config, strict=True)
        except ModelConfigError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ServingStatus as exc:
            _abort(context, exc)
        return model_management_pb2.ReloadConfigResponse()


def reload_request(config_text: str) -> model_management_pb2.ReloadConfigRequest:
    """A ReloadConfigRequest carrying a ModelServerConfig written in text format."""
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text, request.config)
    assert isinstance(request.config, model_server_config_pb2.ModelServerConfig)
    return request
