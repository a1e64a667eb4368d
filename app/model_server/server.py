"""One model server built from its flags, as TF Serving's ``Server::BuildAndStart`` builds it, and its shutdown.

The order is TF Serving's (model_servers/server.cc): the model config (one model from
``--model_name``/``--model_base_path``, or ``--model_config_file``), the session and batching
options, the models loaded (the server does not start until every configured model has a version
available, or one failed), then the gRPC port, then the REST port. :meth:`Server.stop` drains:
both ports stop taking calls at once, calls in flight are answered for up to the grace period,
then the models are unloaded.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf import text_format

from app.errors import ServingStatus, wire_message
from app.model_server import flags as server_flags
from app.model_server.grpc_api import ModelServer
from app.model_server.monitoring import MonitoringConfigError, ServingMetrics, read_monitoring_config
from app.model_server.rest import RestServer, create_rest_app
from app.serving.batching import (
    DEFAULT_THREAD_POOL,
    Batching,
    BatchingConfigError,
    BatchingOptions,
    read_batching_parameters,
)
from app.serving.model_config import ModelConfigError, ServingConfig, parse_model_config
from app.serving.protos.tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig
from app.serving.runtime import ModelRuntime

log = logging.getLogger(__name__)

ALL_ADDRESSES = "0.0.0.0"  # server.cc: "0.0.0.0" is the way to listen on every address in gRPC


class StartError(RuntimeError):
    """The server cannot start; the message is one line that says why."""


def single_model_config(name: str, base_path: str) -> ServingConfig:
    """BuildSingleModelConfig: one model, its name and base path, the TensorFlow platform, the latest version."""
    proto = ModelServerConfig()
    proto.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    try:
        # The paths are checked when the runtime applies it, with TF Serving's words (absolute, then existing).
        return parse_model_config(
            text_format.MessageToString(proto), path="--model_base_path", container_prefix="", check_paths=False
        )
    except ModelConfigError as exc:
        raise StartError(f"--model_name={name} --model_base_path={base_path}: {exc.reason}") from None


def session_config(flags: Any) -> tf.compat.v1.ConfigProto:
    """The ConfigProto every session runs with, built as server.cc builds it: the config file, then the GPU memory
    fraction and the thread counts from the flags (which always win over the file's)."""
    config = tf.compat.v1.ConfigProto()
    if flags.tensorflow_session_config_file:
        path = Path(flags.tensorflow_session_config_file)
        try:
            text_format.Parse(path.read_text(encoding="utf-8"), config)
        except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
            raise StartError(f"--tensorflow_session_config_file={path}: {exc}") from None
    config.gpu_options.per_process_gpu_memory_fraction = flags.per_process_gpu_memory_fraction
    if flags.tensorflow_intra_op_parallelism > 0 or flags.tensorflow_inter_op_parallelism > 0:
        config.intra_op_parallelism_threads = flags.tensorflow_intra_op_parallelism
        config.inter_op_parallelism_threads = flags.tensorflow_inter_op_parallelism
    else:
        config.intra_op_parallelism_threads = flags.tensorflow_session_parallelism
        config.inter_op_parallelism_threads = flags.tensorflow_session_parallelism
    return config


def batching(flags: Any) -> Batching | None:
    """``--enable_batching``: TF Serving's defaults with only a thread pool name, or the parameters file."""
    if not flags.enable_batching:
        return None
    try:
        if flags.batching_parameters_file:
            options = read_batching_parameters(flags.batching_parameters_file)
        else:
            options = BatchingOptions(thread_pool_name=DEFAULT_THREAD_POOL)
        return Batching(options, per_model=flags.enable_per_model_batching_parameters)
    except BatchingConfigError as exc:
        raise StartError(f"--batching_parameters_file={flags.batching_parameters_file}: {exc}") from None


class Server:
    """A running model server: the runtime, its gRPC port and, with ``--rest_api_port``, its REST port."""

    def __init__(self, flags: Any) -> None:
        self.flags = flags
        self.metrics = ServingMetrics()
        self.monitoring_path = self._monitoring_path(flags)
        self.runtime: ModelRuntime | None = None
        self.grpc: ModelServer | None = None
        self.rest: RestServer | None = None

    @staticmethod
    def _monitoring_path(flags: Any) -> str | None:
        if not flags.monitoring_config_file:
            return None
        try:
            path = read_monitoring_config(flags.monitoring_config_file)
        except MonitoringConfigError as exc:
            raise StartError(f"--monitoring_config_file={flags.monitoring_config_file}: {exc}") from None
        if path is not None and not flags.rest_api_port:
            log.warning("--monitoring_config_file: the Prometheus page is served on the REST port; set --rest_api_port")
        if path is not None and not path.startswith("/"):
            raise StartError(
                f"--monitoring_config_file={flags.monitoring_config_file}: path {path!r} must start with /"
            )
        return path

    def start(self) -> Server:
        """Load the models, then open the ports. Raises StartError (one line) when the server cannot start."""
        return self.load().serve()

    def load(self) -> Server:
        """Load the models: returns once every configured model has a version available (StartError if one failed).
        Anything raised meanwhile (a signal's exception too) leaves nothing loaded."""
        self.runtime = self._runtime()
        return self

    def serve(self) -> Server:
        """Open the gRPC port, then the REST port. Raises StartError when one cannot be had (both closed then)."""
        flags = self.flags
        assert self.runtime is not None, "load() first"
        try:
            self.grpc = ModelServer(
                runtime=self.runtime,
                host=ALL_ADDRESSES,
                port=flags.port or None,
                unix_socket=flags.grpc_socket_path or None,
                max_threads=flags.grpc_max_threads,
                response_form="content" if flags.enable_serialization_as_tensor_content else "field",
                options=server_flags.channel_arguments(flags.grpc_channel_arguments),
                metrics=self.metrics,
            ).start()
            if flags.port:
                log.info("Running gRPC ModelServer at %s:%d ...", ALL_ADDRESSES, flags.port)
            if flags.grpc_socket_path:
                log.info("Running gRPC ModelServer at UNIX socket %s ...", flags.grpc_socket_path)
            if flags.rest_api_port:
                app = create_rest_app(
                    self.runtime,
                    timeout=flags.rest_api_timeout_in_ms / 1000 or None,
                    metrics=self.metrics,
                    monitoring_path=self.monitoring_path,
                    cors=flags.rest_api_enable_cors_support,
                )
                try:
                    self.rest = RestServer(
                        app, host=ALL_ADDRESSES, port=flags.rest_api_port, threads=flags.rest_api_num_threads
                    ).start()
                except OSError as exc:
                    raise StartError(
                        f"could not bind the REST port {flags.rest_api_port}: {exc.strerror or exc}"
                    ) from None
                log.info("Exporting HTTP/REST API at:localhost:%d ...", flags.rest_api_port)
        except RuntimeError as exc:  # a gRPC port that cannot be bound
            self.stop(0)
            raise StartError(str(exc)) from None
        except BaseException:
            self.stop(0)
            raise
        return self

    def _runtime(self) -> ModelRuntime:
        flags = self.flags
        single = None if flags.model_config_file else single_model_config(flags.model_name, flags.model_base_path)
        options: dict[str, Any] = {
            "container_prefix": "",  # real paths: the model server has no /models/ to map
            "poll_interval": flags.file_system_poll_wait_seconds,
            "config_poll_interval": flags.model_config_file_poll_wait_seconds,
            "warmup": flags.enable_model_warmup,
            "session_config": session_config(flags),
            "max_load_retries": flags.max_num_load_retries,
            "load_retry_interval": max(0.0, flags.load_retry_interval_micros / 1e6),
            "allow_labels_for_unavailable": flags.allow_version_labels_for_unavailable_models,
            "batching": batching(flags),  # the runtime closes it, also when it fails to start
        }
        try:
            if single is not None:
                return ModelRuntime(None, config=single, **options)
            return ModelRuntime(flags.model_config_file, **options)
        except ModelConfigError as exc:
            raise StartError(str(exc)) from None
        except ServingStatus as exc:  # load_servables_fast.cc: a model did not become available, or a refused label
            raise StartError(f"{exc.status.name}: {wire_message(exc.message)}") from None

    @property
    def grpc_port(self) -> int | None:
        return self.grpc.port if self.grpc is not None else None

    def stop(self, grace: float) -> None:
        """Stop both ports at once, answer the calls in flight for up to ``grace`` seconds, then unload the models."""
        stoppers = []
        if self.grpc is not None:
            stoppers.append(threading.Thread(target=self.grpc.stop, args=(grace,), name="stop-grpc"))
        if self.rest is not None:
            stoppers.append(threading.Thread(target=self.rest.stop, args=(grace,), name="stop-rest"))
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        self.grpc = self.rest = None
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            runtime.close()
