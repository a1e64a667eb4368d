"""`python -m app.model_server`'s flags: tensorflow_model_server 2.20's names, types, defaults and forms.

The names and types below are copied from tensorflow/serving 2.20.0's model_servers/main.cc flag table (in its
order), so that a flag added, dropped or retyped in the product's table is caught here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.model_server import __main__ as entry
from app.model_server import flags

MAIN_CC_FLAGS = [
    ("port", "int32"), ("grpc_socket_path", "string"), ("rest_api_port", "int32"),
    ("rest_api_num_threads", "int32"), ("rest_api_timeout_in_ms", "int32"), ("rest_api_enable_cors_support", "bool"),
    ("enable_batching", "bool"), ("allow_version_labels_for_unavailable_models", "bool"),
    ("batching_parameters_file", "string"), ("enable_per_model_batching_parameters", "bool"),
    ("model_config_file", "string"), ("model_config_file_poll_wait_seconds", "int32"), ("model_name", "string"),
    ("model_base_path", "string"), ("num_load_threads", "int32"), ("num_unload_threads", "int32"),
    ("max_num_load_retries", "int32"), ("load_retry_interval_micros", "int64"),
    ("file_system_poll_wait_seconds", "int32"), ("flush_filesystem_caches", "bool"),
    ("tensorflow_session_parallelism", "int64"), ("tensorflow_session_config_file", "string"),
    ("tensorflow_intra_op_parallelism", "int64"), ("tensorflow_inter_op_parallelism", "int64"),
    ("use_alts_credentials", "bool"), ("ssl_config_file", "string"), ("platform_config_file", "string"),
    ("per_process_gpu_memory_fraction", "float"), ("saved_model_tags", "string"),
    ("grpc_channel_arguments", "string"), ("grpc_max_threads", "int32"), ("enable_model_warmup", "bool"),
    ("num_request_iterations_for_warmup", "int32"), ("version", "bool"), ("monitoring_config_file", "string"),
    ("remove_unused_fields_from_bundle_metagraph", "bool"), ("prefer_tflite_model", "bool"),
    ("num_tflite_pools", "int32"), ("num_tflite_interpreters_per_pool", "int32"),
    ("enable_signature_method_name_check", "bool"), ("xla_cpu_compilation_enabled", "bool"),
    ("xla_gpu_compilation_enabled", "bool"), ("enable_profiler", "bool"), ("thread_pool_factory_config_file", "string"),
    ("mixed_precision", "string"), ("skip_initialize_tpu", "bool"), ("enable_grpc_healthcheck_service", "bool"),
    ("enable_serialization_as_tensor_content", "bool"),
]  # fmt: skip

# server.h's Options defaults that do not depend on the machine.
SERVER_H_DEFAULTS = {
    "port": 8500, "rest_api_port": 0, "rest_api_timeout_in_ms": 30000, "model_name": "default",
    "max_num_load_retries": 5, "load_retry_interval_micros": 60_000_000, "file_system_poll_wait_seconds": 1,
    "model_config_file_poll_wait_seconds": 0, "enable_model_warmup": True, "saved_model_tags": "serve",
    "enable_batching": False, "allow_version_labels_for_unavailable_models": False, "flush_filesystem_caches": True,
}  # fmt: skip
SERVED = ["--model_base_path=/srv/models/m"]


def test_every_flag_of_tensorflow_model_server_is_known_with_its_type_in_its_order():
    assert [(flag.name, flag.kind) for flag in flags.FLAGS] == MAIN_CC_FLAGS
    assert all(flag.how in ("honoured", "ignored", "refused") for flag in flags.FLAGS)
    assert all(flag.note for flag in flags.FLAGS if flag.how != "honoured")


def test_defaults_are_tf_servings():
    parsed = flags.parse([])
    assert {name: getattr(parsed, name) for name in SERVER_H_DEFAULTS} == SERVER_H_DEFAULTS


@pytest.mark.parametrize(
    ("argv", "name", "value"),
    [
        (["--port=9000"], "port", 9000),
        (["--port", "9000"], "port", 9000),
        (["--port=1", "--port=2"], "port", 2),  # the last one wins, as in TensorFlow's parser
        (["--enable_batching"], "enable_batching", True),
        (["--enable_batching=false"], "enable_batching", False),
        (["--enable_batching=TRUE"], "enable_batching", True),
        (["--enable_batching=0"], "enable_batching", False),
        (["--enable_batching", "false"], "enable_batching", False),
        (["--enable_model_warmup=false"], "enable_model_warmup", False),
        (["--model_base_path=/a=b"], "model_base_path", "/a=b"),
        (["--per_process_gpu_memory_fraction=0.25"], "per_process_gpu_memory_fraction", 0.25),
        (["--load_retry_interval_micros=-1"], "load_retry_interval_micros", -1),
    ],
)
def test_forms_of_a_flag(argv, name, value):
    assert getattr(flags.parse(argv), name) == value


def test_a_boolean_flag_does_not_swallow_the_next_flag():
    parsed = flags.parse(["--enable_batching", "--port=1"])
    assert (parsed.enable_batching, parsed.port) == (True, 1)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prot=1"], "unknown flag: --prot (did you mean --port?)"),
        (["--no_such_flag"], "unknown flag: --no_such_flag"),
        (["serve"], "unknown argument: serve"),
        (["-port=1"], "unknown argument: -port=1"),
        (["--port=85OO"], "Couldn't interpret value 85OO for flag port. It takes a whole number."),
        (
            ["--port=99999999999"],
            "Couldn't interpret value 99999999999 for flag port. It is out of range for an int32.",
        ),
        (["--enable_batching=yes"], "Couldn't interpret value yes for flag enable_batching. Use true or false."),
        (["--port"], "--port needs a value: --port=<int32>"),
        (["--model_name", "--port=1"], "--model_name needs a value: --model_name=<string>"),
    ],
)
def test_a_command_line_it_cannot_read_is_one_line_naming_the_argument(argv, message):
    with pytest.raises(flags.FlagError) as refused:
        flags.parse(argv)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        ([], "Both --model_base_path and --model_config_file are empty"),
        ([*SERVED, "--port=0"], "At least one of --port or --grpc_socket_path must be set"),
        ([*SERVED, "--port=70000"], "--port=70000 is not a TCP port"),
        ([*SERVED, "--rest_api_port=8500"], "--rest_api_port=8500 is the same as --port"),
        ([*SERVED, "--batching_parameters_file=/b.txt"], "--batching_parameters_file is set without --enable_batching"),
        ([*SERVED, "--ssl_config_file=/ssl.txt"], "--ssl_config_file=/ssl.txt is not supported: TLS is not served"),
        ([*SERVED, "--use_alts_credentials"], "--use_alts_credentials=true is not supported"),
        ([*SERVED, "--saved_model_tags=serve,tpu"], "--saved_model_tags=serve,tpu is not supported"),
        ([*SERVED, "--prefer_tflite_model=true"], "--prefer_tflite_model=true is not supported"),
        ([*SERVED, "--file_system_poll_wait_seconds=-1"], "negative values are reserved for TF Serving's own tests"),
        ([*SERVED, "--grpc_max_threads=0"], "--grpc_max_threads=0 must be at least 1"),
        ([*SERVED, "--grpc_channel_arguments=grpc.max_connection_age_ms"], "is not key=value"),
        (
            [*SERVED, *(f"--tensorflow_{kind}_parallelism=2" for kind in ("session", "intra_op", "inter_op"))],
            "You cannot configure all.",
        ),
        ([*SERVED, "--per_process_gpu_memory_fraction=1.5"], "must be between 0 and 1"),
    ],
)
def test_a_server_it_cannot_start_is_refused_before_anything_loads(argv, words):
    with pytest.raises(flags.FlagError) as refused:
        flags.check(flags.parse(argv))
    assert words in str(refused.value)
    assert "\n" not in str(refused.value)


def test_flags_without_effect_here_are_accepted_and_said_once_set():
    assert flags.check(flags.parse(SERVED)) == []
    warnings = flags.check(flags.parse([*SERVED, "--num_load_threads=4", "--enable_profiler=false"]))
    assert warnings == [
        "--num_load_threads=4 has no effect here: versions load one at a time, as with TF Serving's default 0",
        "--enable_profiler=false has no effect here: there is no profiler service",
    ]
    ignored = flags.check(flags.parse(["--model_config_file=/c", "--model_name=m"]))
    assert ignored == ["--model_name and --model_base_path are ignored: --model_config_file lists the models"]


def test_compose_servings_command_line_is_accepted():
    """docker-compose.yaml's TF Serving flags, so that the model server can stand in for the CPU image."""
    argv = [
        "--port=8500", "--rest_api_port=8501", "--model_config_file=/etc/serving/serving_models.config",
        "--model_config_file_poll_wait_seconds=60", "--file_system_poll_wait_seconds=5",
        "--allow_version_labels_for_unavailable_models=true", "--enable_batching=true",
        "--batching_parameters_file=/config/batching_parameters.txt", "--enable_per_model_batching_parameters=true",
        "--monitoring_config_file=/config/monitoring.config", "--enable_model_warmup=true",
        "--per_process_gpu_memory_fraction=0.3", "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
    ]  # fmt: skip
    parsed = flags.parse(argv)
    assert flags.check(parsed) == []
    assert flags.channel_arguments(parsed.grpc_channel_arguments) == [("grpc.max_connection_age_ms", 60000)]


def test_usage_lists_every_flag_in_tensorflows_layout():
    text = flags.usage()
    assert text.startswith("usage: python -m app.model_server\nFlags:\n")
    for flag in flags.FLAGS:
        assert f"\t--{flag.name}=" in text
    assert '\t--model_name="default"' in text


def test_main_answers_a_wrong_flag_with_one_line_and_the_usage(capsys):
    assert entry.main(["--model_base_path=/m", "--prot=1"]) == 2
    out, err = capsys.readouterr()
    first, *rest = err.splitlines()
    assert first == "python -m app.model_server: unknown flag: --prot (did you mean --port?)"
    assert rest[0] == "usage: python -m app.model_server"
    assert out == ""


def test_main_help_prints_the_usage(capsys):
    assert entry.main(["--help"]) == 0
    assert capsys.readouterr().out == flags.usage()


def test_the_docs_table_says_what_the_server_does_with_every_flag():
    """docs/model-server.md's table is read against FLAGS: each flag once, honoured/ignored/refused as the code does."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "model-server.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `--(\w+)` \|[^|]*\| (honoured|ignored|refused)\b", page, re.M))
    assert rows == {flag.name: flag.how for flag in flags.FLAGS}
