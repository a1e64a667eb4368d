"""deploy/k8s: each overlay renders with kubectl's Kustomize, and every document it renders validates strictly
against a pinned Kubernetes version; then what a cluster would only show at run time is checked here:

- the gateway's target names the headless TF Serving Service and its gRPC port, in the rendered namespace;
- the TF Serving probes ask for exactly the servables of pipeline.toml;
- the ConfigMaps hold serving_models.config, pipeline.toml and deploy/'s files byte for byte (no copies
  that could drift), and every servable of serving_models.config is served from the mounted volume;
- TF Serving runs with docker-compose.yaml's flags; every image tag is pinned; no container runs as root;
- GPU only in the gpu overlay; only the gateway may reach TF Serving and Redis, and Prometheus (where
  docs/kubernetes.md assumes it runs) TF Serving's metrics port; every scrape job of
  deploy/prometheus/prometheus.yml reaches the port it scrapes through the policies.

Rendering needs no flag (`kubectl apply -k` works as written): the ConfigMaps come from copies inside the
kustomization, which tests/system/test_deploy_files.py holds to their sources. kubectl missing: the tests skip,
unless GATEWAY_REQUIRE_KUBECTL=1 (CI).
"""

from __future__ import annotations

import copy
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from app.serving.model_config import parse_model_config
from tests.support import programs
from tests.support.k8s import find, mounted_file, reaches, validate

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("gpu", "cpu")
TF_SERVING_IMAGES = {"gpu": "tensorflow/serving:2.20.0-gpu", "cpu": "tensorflow/serving:2.20.0"}
DEFAULT_SERVABLES = ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime")
HEALTHCHECK = "/config/healthcheck.sh"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
# Where Prometheus runs, as network-policy.yaml and docs/kubernetes.md assume: its namespace and its pods' labels.
PROMETHEUS_NAMESPACE = "monitoring"
PROMETHEUS_LABELS = {"app.kubernetes.io/name": "prometheus"}
# The relabelling by which each scrape job keeps its pods: (the pods' app name, the container port's name).
SCRAPE_KEEP = ["__meta_kubernetes_pod_label_app_kubernetes_io_name", "__meta_kubernetes_pod_container_port_name"]


@pytest.fixture(scope="module")
def kubectl() -> str:
    return programs.require("kubectl", "KUBECTL", package="kubectl")


def render(kubectl: str, overlay: str) -> subprocess.CompletedProcess:
    """`kubectl kustomize` with default options, as `kubectl apply -k` and GitOps tools render."""
    command = [kubectl, "kustomize", str(K8S / "overlays" / overlay)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, kubectl: str) -> tuple[str, list[dict]]:
    """(overlay, its documents) as `kubectl kustomize` renders them."""
    result = render(kubectl, request.param)
    assert result.returncode == 0, result.stderr
    return request.param, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def config_map(docs: list[dict], prefix: str) -> dict:
    """The generated ConfigMap whose name starts with ``prefix`` (Kustomize appends a content hash)."""
    matches = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(matches) == 1, [d["metadata"]["name"] for d in matches]
    return matches[0]


def pod_specs(docs: list[dict]) -> Iterator[tuple[str, dict]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(docs: list[dict], deployment: str) -> dict:
    spec = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == deployment)


def env(container_spec: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container_spec.get("env", []) if "value" in item}


def pipeline_servables() -> tuple[str, ...]:
    """The servables pipeline.toml's four stages call (the defaults where it, or a stage's key, is absent)."""
    path = REPO / "pipeline.toml"
    tables = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    stages = ("detect", "encode", "search", "translate")
    return tuple(
        tables.get(stage, {}).get("servable", default) for stage, default in zip(stages, DEFAULT_SERVABLES, strict=True)
    )


# -- rendering and validation -----------------------------------------------------------------------


def test_every_rendered_document_validates_strictly(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    for doc in docs:
        validate(doc)  # raises ValidationError or SchemaNotFoundError
    kinds = {doc["kind"] for doc in docs}
    assert {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Job", "Deployment", "Service",
        "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
    } <= kinds  # fmt: skip
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {"portrait"}


def test_strict_validation_refuses_a_misspelt_field_and_an_unknown_kind(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    deployment = copy.deepcopy(find(docs, "Deployment", "gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)
    kserve = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(kserve)


def test_no_kustomization_reaches_outside_its_folder() -> None:
    """What made `kubectl apply -k` fail before: a generator's file outside the kustomization's folder."""
    for kustomization in sorted(REPO.glob("deploy/**/kustomization.yaml")):
        spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        for generator in spec.get("configMapGenerator", []) + spec.get("secretGenerator", []):
            for entry in generator.get("files", []) + generator.get("envs", []):
                path = (kustomization.parent / entry.rpartition("=")[2]).resolve()
                assert path.is_relative_to(kustomization.parent.resolve()), (kustomization, entry)


# -- TF Serving ---------------------------------------------------------------------------------------


def test_the_gateway_targets_the_headless_service_on_its_grpc_port(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    target = env(container(docs, "gateway"))["GATEWAY_SERVING_TARGET"]
    assert target.startswith("dns:///"), target  # the gRPC DNS resolver: every address, round_robin
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    name, namespace, *domain = host.split(".")
    assert domain == ["svc", "cluster", "local"], target
    service = find(docs, "Service", name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS returns each ready pod
    grpc_port = next(p for p in service["spec"]["ports"] if p["port"] == int(port))
    assert grpc_port["name"] == "grpc"
    serving = find(docs, "Deployment", "tf-serving")
    labels = serving["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in container(docs, "tf-serving")["ports"]}
    assert container_ports[grpc_port["targetPort"]] == 8500
    assert "--port=8500" in container(docs, "tf-serving")["args"]


def test_the_probes_ask_for_the_servables_of_the_pipeline_file(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    serving = container(docs, "tf-serving")
    spec = find(docs, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    for probe in ("startupProbe", "readinessProbe"):
        command = serving[probe]["exec"]["command"]
        assert command[:2] == ["bash", HEALTHCHECK], command
        assert tuple(command[2:]) == pipeline_servables(), probe
    script = mounted_file(docs, spec, serving, HEALTHCHECK)
    assert script == (REPO / "deploy" / "healthcheck.sh").read_text(encoding="utf-8")


def test_the_config_maps_are_the_repository_files_and_every_servable_is_on_the_volume(
    rendered: tuple[str, list[dict]],
) -> None:
    _, docs = rendered
    config = config_map(docs, "serving-config")["data"]
    model_config = (REPO / "serving_models.config").read_text(encoding="utf-8")
    assert config["serving_models.config"] == model_config
    if (REPO / "pipeline.toml").is_file():
        assert config["pipeline.toml"] == (REPO / "pipeline.toml").read_text(encoding="utf-8")
    deploy = config_map(docs, "serving-deploy")["data"]
    for name in ("healthcheck.sh", "batching_parameters.txt", "monitoring.config", "prepare-models.sh"):
        assert deploy[name] == (REPO / "deploy" / name).read_text(encoding="utf-8"), name
    batching = config_map(docs, "serving-batching")["data"]
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "deploy" / "batching").glob("*.pbtxt")}
    assert batching == on_disk  # a new deploy/batching/<servable>.pbtxt must be listed in kustomization.yaml

    servables = parse_model_config(model_config, check_paths=False).servables
    assert set(pipeline_servables()) <= {s.name for s in servables}
    serving = container(docs, "tf-serving")
    spec = find(docs, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in serving["args"])
    assert mounted_file(docs, spec, serving, flags["model_config_file"]) == model_config
    assert mounted_file(docs, spec, serving, flags["batching_parameters_file"])
    assert mounted_file(docs, spec, serving, flags["monitoring_config_file"])
    models = next(m for m in serving["volumeMounts"] if m["name"] == "models")
    for servable in servables:
        assert servable.configured_base_path.startswith(models["mountPath"] + "/"), servable.name
    volume = next(v for v in spec["volumes"] if v["name"] == "models")
    claim = find(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


def test_tf_serving_runs_with_the_flags_of_docker_compose(rendered: tuple[str, list[dict]]) -> None:
    """One set of flags, in two files: held equal here (compose's GPU memory share is for replicas sharing a GPU)."""
    _, docs = rendered
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text(encoding="utf-8"))["services"]["serving"]
    compose_flags = [flag for flag in compose["command"] if not flag.startswith("--per_process_gpu_memory_fraction")]
    serving = container(docs, "tf-serving")
    assert serving["command"] == compose["entrypoint"]
    assert serving["args"] == compose_flags


# -- images, users, GPUs -------------------------------------------------------------------------------


def test_every_image_tag_is_pinned(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    images = {c["image"] for _, spec in pod_specs(docs) for c in containers(spec)}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), f"{image}: no pinned tag"
        assert tag[0].isdigit(), f"{image}: {tag!r} is not a version"
    assert container(docs, "tf-serving")["image"] == TF_SERVING_IMAGES[overlay]


def test_no_container_runs_as_root(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    for where, spec in pod_specs(docs):
        pod = spec.get("securityContext", {})
        for c in containers(spec):
            context = {**pod, **c.get("securityContext", {})}
            assert context.get("runAsNonRoot") is True, (where, c["name"])
            assert context.get("runAsUser", 0) > 0, (where, c["name"])
            assert context.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert context.get("capabilities", {}).get("drop") == ["ALL"], (where, c["name"])
            assert context.get("readOnlyRootFilesystem") is True, (where, c["name"])


def test_gpus_only_in_the_gpu_overlay(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    for where, spec in pod_specs(docs):
        for c in containers(spec):
            gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            wanted = 1 if (overlay, where, c["name"]) == ("gpu", "Deployment/tf-serving", "tf-serving") else None
            assert gpus == wanted, (overlay, where, c["name"])
            assert "memory" in c["resources"]["limits"] and "cpu" in c["resources"]["requests"], (where, c["name"])


# -- the gateway ---------------------------------------------------------------------------------------


def test_the_gateway_probes_settings_and_metrics_folder(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    gateway = container(docs, "gateway")
    spec = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    variables = env(gateway)
    settings = Settings.load(environ=variables)  # every GATEWAY_* value is one the gateway accepts
    assert settings.backend == "grpc" and settings.trusted_proxies == 1
    assert mounted_file(docs, spec, gateway, variables["GATEWAY_MODEL_CONFIG"]) == (
        REPO / "serving_models.config"
    ).read_text(encoding="utf-8")
    assert mounted_file(docs, spec, gateway, variables["GATEWAY_PIPELINE_CONFIG"]) is not None
    multiproc = next(m for m in gateway["volumeMounts"] if m["mountPath"] == variables["PROMETHEUS_MULTIPROC_DIR"])
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == multiproc["name"])
    # Its files are cleared before gunicorn starts (an emptyDir outlives a container restart), then gunicorn
    # runs as the image's own command does.
    [script] = gateway["args"]
    assert gateway["command"] == ["sh", "-c"]
    assert (
        script
        == """rm -f "$PROMETHEUS_MULTIPROC_DIR"/*.db && exec gunicorn --config gunicorn.conf.py 'app:create_app()'"""
    )

    storage = urlsplit(settings.rate_limit_storage)
    assert storage.scheme == "redis"
    assert {"socket_timeout", "socket_connect_timeout"} <= parse_qs(storage.query).keys()
    name, namespace, *_ = storage.hostname.split(".")
    redis = find(docs, "Service", name)
    assert redis["metadata"]["namespace"] == namespace and redis["spec"]["ports"][0]["port"] == storage.port


def test_autoscaler_and_disruption_budgets_select_what_exists(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    hpa = find(docs, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for name in ("gateway", "tf-serving"):
        budget = find(docs, "PodDisruptionBudget", name)
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_only_the_gateway_reaches_tf_serving_and_redis(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    gateway_labels = find(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    for name, port in (("tf-serving", 8500), ("redis", 6379)):
        policy = find(docs, "NetworkPolicy", name)
        labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        [rule] = policy["spec"]["ingress"]
        [peer] = rule["from"]
        assert set(peer) == {"podSelector"}  # this namespace's pods only
        assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_every_prometheus_scrape_job_reaches_the_port_it_scrapes(rendered: tuple[str, list[dict]]) -> None:
    """deploy/prometheus/prometheus.yml's jobs keep pods by app name and container port name; from where
    Prometheus runs, the policies must let each job in on that port."""
    _, docs = rendered
    scraped = {}
    for job in yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))["scrape_configs"]:
        [discovery] = job["kubernetes_sd_configs"]
        assert discovery["role"] == "pod", job["job_name"]
        [keep] = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
        assert keep["source_labels"] == SCRAPE_KEEP, job["job_name"]
        app_name, port_name = keep["regex"].split(";")
        [deployment] = [
            doc for doc in docs
            if doc["kind"] == "Deployment"
            and doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == app_name
        ]  # fmt: skip
        assert discovery["namespaces"]["names"] == [deployment["metadata"]["namespace"]], job["job_name"]
        name = deployment["metadata"]["name"]
        [port] = [
            p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", []) if p["name"] == port_name
        ]  # fmt: skip
        assert reaches(docs, PROMETHEUS_NAMESPACE, PROMETHEUS_LABELS, name, port), f"{job['job_name']}: {name}:{port}"
        scraped[job["job_name"]] = (name, port)
    assert scraped == {"portrait-gateway": ("gateway", 8000), "tf-serving": ("tf-serving", 8501)}


def test_who_reaches_what(rendered: tuple[str, list[dict]]) -> None:
    """The policies as a whole: the gateway calls TF Serving and Redis, Prometheus reads TF Serving's metrics port
    and nothing else behind a policy, and no other pod (here or elsewhere) gets in."""
    _, docs = rendered
    gateway = find(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    models_job = find(docs, "Job", "models")["spec"]["template"]["metadata"].get("labels", {})
    cases = {
        ("gateway", "portrait", "tf-serving", 8500): True,
        ("gateway", "portrait", "redis", 6379): True,
        ("gateway", "portrait", "tf-serving", 8501): False,
        ("prometheus", PROMETHEUS_NAMESPACE, "tf-serving", 8501): True,
        ("prometheus", PROMETHEUS_NAMESPACE, "tf-serving", 8500): False,
        ("prometheus", PROMETHEUS_NAMESPACE, "redis", 6379): False,
        ("prometheus", "portrait", "tf-serving", 8501): False,  # Prometheus's label, in the wrong namespace
        ("other", PROMETHEUS_NAMESPACE, "tf-serving", 8501): False,  # the right namespace, another pod
        ("models job", "portrait", "tf-serving", 8500): False,
        ("models job", "portrait", "redis", 6379): False,
    }
    pods = {"gateway": gateway, "prometheus": PROMETHEUS_LABELS, "other": {"app": "other"}, "models job": models_job}
    found = {case: reaches(docs, case[1], pods[case[0]], case[2], case[3]) for case in cases}
    assert found == cases


def test_the_kubernetes_page_states_where_prometheus_is_assumed_to_run() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert f"kubernetes.io/metadata.name: {PROMETHEUS_NAMESPACE}" in text
    assert all(f"{key}: {value}" in text for key, value in PROMETHEUS_LABELS.items())


def test_the_documented_apply_command_is_the_tested_one() -> None:
    """docs/kubernetes.md tells users to apply each overlay as these tests render it: with no flag."""
    text = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    for overlay in OVERLAYS:
        command = f"kubectl apply -k deploy/k8s/overlays/{overlay}"
        assert command in text, command
    assert "--load-restrictor" not in text
