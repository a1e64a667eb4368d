"""``tensorflow_model_server``'s flags, spelled and parsed as TF Serving 2.20 spells and parses them.

Every flag of model_servers/main.cc is here, with its type and default, and what this server does
with it (``how``):

- ``honoured``: it acts as it does in TF Serving (the ``note`` says how, where it differs at all);
- ``ignored``: accepted so that a command line written for TF Serving runs unchanged, but it has no
  effect here; a value other than the default is logged at start, with the reason;
- ``refused``: a value other than the default stops the server with one line saying why (serving on
  without it would be wrong: plain text where TLS was asked for, another graph than the one named).

Forms, as TensorFlow's flag parser takes them (tsl/util/command_line_flags.cc): ``--name=value``;
for a boolean ``--name`` (true) or ``--name=true|false|1|0``. Beyond TensorFlow's parser,
``--name value`` is taken too (and ``--name true`` for a boolean). An argument that is no flag
here is an error that names it, unlike TF Serving, which prints "unknown argument" and serves on.
This module imports nothing heavy: ``--help`` and a wrong flag answer at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROGRAM = "python -m app.model_server"
_CPUS = os.cpu_count() or 1
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class FlagError(ValueError):
    """A command line the server cannot start with; the message is one line that says which flag and why."""


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # TensorFlow's flag types: int32, int64, float, bool, string
    default: Any
    how: str  # honoured, ignored or refused
    text: str
    note: str = ""

    @property
    def python_type(self) -> type:
        return {"int32": int, "int64": int, "float": float, "bool": bool, "string": str}[self.kind]


FLAGS: tuple[Flag, ...] = (
    Flag("port", "int32", 8500, "honoured", "TCP port of the gRPC API (0: none, then --grpc_socket_path is needed)",
         "listens on 0.0.0.0, as TF Serving does"),
    Flag("grpc_socket_path", "string", "", "honoured", "a UNIX socket to serve the gRPC API on as well"),
    Flag("rest_api_port", "int32", 0, "honoured", "TCP port of the REST API (0: no REST API); not --port",
         "TF Serving's /v1/models/... API and the Prometheus page, on 0.0.0.0"),
    Flag("rest_api_num_threads", "int32", 4 * _CPUS, "honoured", "threads that answer REST requests"),
    Flag("rest_api_timeout_in_ms", "int32", 30000, "honoured",
         "deadline of a REST predict, classify or regress call (0: none)"),
    Flag("rest_api_enable_cors_support", "bool", False, "honoured", "add CORS headers to REST answers"),
    Flag("enable_batching", "bool", False, "honoured", "merge concurrent runs of a model into batches",
         "app.serving.batching: TF Serving's BatchingSession, but a task is never split across batches"),
    Flag("allow_version_labels_for_unavailable_models", "bool", False, "honoured",
         "let a new version label name a version that is not loaded yet"),
    Flag("batching_parameters_file", "string", "", "honoured",
         "a BatchingParameters text proto (needs --enable_batching)",
         "every field but enable_large_batch_splitting and max_execution_batch_size"),
    Flag("enable_per_model_batching_parameters", "bool", False, "honoured",
         "batch only versions with a batching_params.pbtxt, with the parameters written there"),
    Flag("model_config_file", "string", "", "honoured",
         "a ModelServerConfig text proto listing the models (then --model_name and --model_base_path are ignored)",
         "base paths are used as written: absolute paths or URIs, no /models/ mapping"),
    Flag("model_config_file_poll_wait_seconds", "int32", 0, "honoured",
         "seconds between reads of --model_config_file (0: read once)"),
    Flag("model_name", "string", "default", "honoured", "name of the one model served without a config file"),
    Flag("model_base_path", "string", "", "honoured",
         "folder of that model's numbered versions (without a config file, required)"),
    Flag("num_load_threads", "int32", 0, "ignored", "threads that load versions",
         "versions load one at a time, as with TF Serving's default 0"),
    Flag("num_unload_threads", "int32", 0, "ignored", "threads that unload versions",
         "versions unload one at a time, as with TF Serving's default 0"),
    Flag("max_num_load_retries", "int32", 5, "honoured", "retries of a failed load before the version is given up"),
    Flag("load_retry_interval_micros", "int64", 60_000_000, "honoured",
         "microseconds between load retries (negative: no wait)"),
    Flag("file_system_poll_wait_seconds", "int32", 1, "honoured",
         "seconds between looks for new versions (0: look once, at start)"),
    Flag("flush_filesystem_caches", "bool", True, "ignored", "flush file system caches after loads",
         "TensorFlow's local file system has no cache to flush"),
    Flag("tensorflow_session_parallelism", "int64", 0, "honoured",
         "threads of each session, intra- and inter-op (0: TensorFlow decides)"),
    Flag("tensorflow_session_config_file", "string", "", "honoured",
         "a TensorFlow ConfigProto text proto for every session (the thread flags override its threads)"),
    Flag("tensorflow_intra_op_parallelism", "int64", 0, "honoured", "threads within one op (0: TensorFlow decides)"),
    Flag("tensorflow_inter_op_parallelism", "int64", 0, "honoured", "ops run at once (0: TensorFlow decides)"),
    Flag("use_alts_credentials", "bool", False, "refused", "serve gRPC with Google ALTS credentials",
         "ALTS is not available here; serving plain text instead would be wrong"),
    Flag("ssl_config_file", "string", "", "refused", "an SSLConfig text proto: serve gRPC over TLS",
         "TLS is not served here; put a TLS-terminating proxy in front instead"),
    Flag("platform_config_file", "string", "", "refused", "a PlatformConfigMap text proto",
         "only the TensorFlow SavedModel platform is served"),
    Flag("per_process_gpu_memory_fraction", "float", 0.0, "honoured",
         "fraction of GPU memory each session may take (0: TensorFlow decides)"),
    Flag("saved_model_tags", "string", "serve", "refused", "tag set of the graph to load",
         "only the serve tag set is loaded"),
    Flag("grpc_channel_arguments", "string", "", "honoured",
         "comma-separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000"),
    Flag("grpc_max_threads", "int32", 4 * _CPUS, "honoured", "threads that answer gRPC calls"),
    Flag("enable_model_warmup", "bool", True, "honoured",
         "replay assets.extra/tf_serving_warmup_requests before a version serves"),
    Flag("num_request_iterations_for_warmup", "int32", 0, "ignored", "times each warmup record is run",
         "each warmup record runs once"),
    Flag("version", "bool", False, "honoured", "print the version and exit"),
    Flag("monitoring_config_file", "string", "", "honoured",
         "a MonitoringConfig text proto: Prometheus metrics on the REST port",
         "TF Serving's request metrics, not TensorFlow's core ones (app.model_server.monitoring)"),
    Flag("remove_unused_fields_from_bundle_metagraph", "bool", True, "ignored",
         "drop unused MetaGraphDef fields to save memory", "the MetaGraphDef is kept as loaded"),
    Flag("prefer_tflite_model", "bool", False, "refused", "serve model.tflite instead of saved_model.pb",
         "TensorFlow Lite models are not served"),
    Flag("num_tflite_pools", "int32", _CPUS, "ignored", "TensorFlow Lite interpreter pools",
         "TensorFlow Lite models are not served"),
    Flag("num_tflite_interpreters_per_pool", "int32", 1, "ignored", "interpreters per TensorFlow Lite pool",
         "TensorFlow Lite models are not served"),
    Flag("enable_signature_method_name_check", "bool", False, "ignored",
         "check the method_name of classify and regress signatures", "method names are not checked (the default)"),
    Flag("xla_cpu_compilation_enabled", "bool", False, "ignored", "enable XLA's CPU JIT",
         "graphs run as TensorFlow's session runs them"),
    Flag("xla_gpu_compilation_enabled", "bool", False, "ignored", "enable XLA's CPU and GPU JIT",
         "graphs run as TensorFlow's session runs them"),
    Flag("enable_profiler", "bool", True, "ignored", "serve TensorFlow's profiler service",
         "there is no profiler service"),
    Flag("thread_pool_factory_config_file", "string", "", "ignored", "a ThreadPoolConfig text proto",
         "sessions run on TensorFlow's own thread pools"),
    Flag("mixed_precision", "string", "", "ignored", "mixed precision mode (bfloat16)",
         "graphs run in the precision they were saved in"),
    Flag("skip_initialize_tpu", "bool", False, "ignored", "skip the TPU system's initialisation", "no TPU support"),
    Flag("enable_grpc_healthcheck_service", "bool", False, "ignored", "serve the standard gRPC health service",
         "not served: ask ModelService.GetModelStatus, or the REST status API"),
    Flag("enable_serialization_as_tensor_content", "bool", False, "honoured",
         "send Predict outputs as tensor_content bytes instead of typed value fields"),
)  # fmt: skip

BY_NAME = {flag.name: flag for flag in FLAGS}
ServerFlags = dataclasses.make_dataclass(
    "ServerFlags",
    [(flag.name, flag.python_type, dataclasses.field(default=flag.default)) for flag in FLAGS],
    frozen=True,
)
ServerFlags.__module__ = __name__
ServerFlags.__doc__ = "The flags a model server was started with, one attribute per flag of FLAGS."
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_INTEGER = re.compile(r"[+-]?\d+")


def usage() -> str:
    """The usage text, in TensorFlow's layout (Flags::Usage): each flag as --name=default, its type, its text."""
    lines = [f"usage: {PROGRAM}", "Flags:"]
    for flag in FLAGS:
        shown = (
            f'"{flag.default}"' if flag.kind == "string"
            else ("true" if flag.default else "false") if flag.kind == "bool"
            else f"{flag.default:f}" if flag.kind == "float"
            else str(flag.default)
        )  # fmt: skip
        text = flag.text + (f" [{flag.how}: {flag.note}]" if flag.how != "honoured" else "")
        lines.append(f"\t{f'--{flag.name}={shown}':<33}\t{flag.kind}\t{text}")
    return "\n".join(lines) + "\n"


def parse(argv: Sequence[str]) -> Any:
    """The flags of ``argv`` (without the program name) as ServerFlags. Raises FlagError naming the argument.

    ``--help`` (or ``-h``) raises :class:`HelpRequested`.
    """
    values: dict[str, Any] = {}
    arguments = list(argv)
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if argument in ("--help", "-h", "-help"):
            raise HelpRequested
        if not argument.startswith("--") or argument == "--":
            raise FlagError(f"unknown argument: {argument}")
        name, equals, given = argument[2:].partition("=")
        flag = BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"unknown flag: --{name}{_suggestion(name)}")
        if not equals:
            following = arguments[index] if index < len(arguments) else None
            if flag.kind == "bool":
                if following is not None and following.lower() in (*_TRUE, *_FALSE):
                    given, index = following, index + 1
                else:
                    given = "true"
            else:
                if following is None or following.startswith("--"):
                    raise FlagError(f"--{name} needs a value: --{name}=<{flag.kind}>")
                given, index = following, index + 1
        values[name] = _value(flag, given)
    return ServerFlags(**values)


class HelpRequested(Exception):
    """``--help`` was given: the caller prints :func:`usage`."""


def _value(flag: Flag, given: str) -> Any:
    """The value of ``--name=given``, checked as TensorFlow's parser checks it (and for range)."""
    problem = f"Couldn't interpret value {given} for flag {flag.name}."
    if flag.kind == "bool":
        lowered = given.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise FlagError(f"{problem} Use true or false.")
    if flag.kind in ("int32", "int64"):
        if not _INTEGER.fullmatch(given.strip()):
            raise FlagError(f"{problem} It takes a whole number.")
        number = int(given)
        low, high = _INT32 if flag.kind == "int32" else _INT64
        if not low <= number <= high:
            raise FlagError(f"{problem} It is out of range for an {flag.kind}.")
        return number
    if flag.kind == "float":
        try:
            return float(given)
        except ValueError:
            raise FlagError(f"{problem} It takes a number.") from None
    return given


def _suggestion(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, BY_NAME, n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def check(flags: Any) -> list[str]:
    """Refuse what the server cannot start with (FlagError, one line); return a warning per ignored flag that was
    set to something other than its default."""
    given = {flag.name: getattr(flags, flag.name) for flag in FLAGS}
    for flag in FLAGS:
        if flag.how == "refused" and given[flag.name] != flag.default:
            raise FlagError(f"--{flag.name}={_shown(given[flag.name])} is not supported: {flag.note}")
    if not 0 <= flags.port <= 65535:
        raise FlagError(f"--port={flags.port} is not a TCP port (0 to 65535)")
    if not 0 <= flags.rest_api_port <= 65535:
        raise FlagError(f"--rest_api_port={flags.rest_api_port} is not a TCP port (0 to 65535)")
    if flags.port == 0 and not flags.grpc_socket_path:
        raise FlagError("At least one of --port or --grpc_socket_path must be set")
    if flags.rest_api_port and flags.rest_api_port == flags.port:
        raise FlagError(
            f"--rest_api_port={flags.rest_api_port} is the same as --port: give the REST API a port of its own"
        )
    if not flags.model_base_path and not flags.model_config_file:
        raise FlagError("Both --model_base_path and --model_config_file are empty: give one of them")
    if flags.batching_parameters_file and not flags.enable_batching:
        raise FlagError("--batching_parameters_file is set without --enable_batching=true")
    for name in ("grpc_max_threads", "rest_api_num_threads"):
        if given[name] < 1:
            raise FlagError(f"--{name}={given[name]} must be at least 1")
    if flags.rest_api_timeout_in_ms < 0:
        raise FlagError(f"--rest_api_timeout_in_ms={flags.rest_api_timeout_in_ms} must be 0 (none) or more")
    if flags.max_num_load_retries < 0:
        raise FlagError(f"--max_num_load_retries={flags.max_num_load_retries} must be 0 or more")
    for name in ("file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds"):
        if given[name] < 0:
            raise FlagError(
                f"--{name}={given[name]}: negative values are reserved for TF Serving's own tests (nothing would "
                "ever be polled); 0 reads once, at start"
            )
    threads = (
        flags.tensorflow_session_parallelism,
        flags.tensorflow_intra_op_parallelism,
        flags.tensorflow_inter_op_parallelism,
    )
    if all(value > 0 for value in threads):
        raise FlagError(
            "Either configure --tensorflow_session_parallelism or (--tensorflow_intra_op_parallelism, "
            "--tensorflow_inter_op_parallelism) separately. You cannot configure all."
        )
    if not 0.0 <= flags.per_process_gpu_memory_fraction <= 1.0:
        raise FlagError(
            f"--per_process_gpu_memory_fraction={flags.per_process_gpu_memory_fraction} must be between 0 and 1"
        )
    channel_arguments(flags.grpc_channel_arguments)  # refuses a malformed list
    warnings = [
        f"--{flag.name}={_shown(given[flag.name])} has no effect here: {flag.note}"
        for flag in FLAGS
        if flag.how == "ignored" and given[flag.name] != flag.default
    ]
    if flags.model_config_file and (flags.model_base_path or flags.model_name != "default"):
        warnings.append("--model_name and --model_base_path are ignored: --model_config_file lists the models")
    return warnings


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """``--grpc_channel_arguments``: ``key=value`` pairs, comma-separated; a value that is a number is passed as
    one, as server.cc passes it."""
    found: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise FlagError(
                f"--grpc_channel_arguments: {item!r} is not key=value (e.g. grpc.max_connection_age_ms=2000)"
            )
        found.append((key, int(value) if _INTEGER.fullmatch(value) else value))
    return found


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
