"""deploy/k8s/components/search-shards: an overlay as docs/kubernetes.md writes it (an overlay of the repository and
the component) renders with no flag and validates strictly, and the sharded gallery maps onto TF Serving as the page
says:

- each shard servable (named as `build-index --shards N` names them, N from the component's shards.toml) has a TF
  Serving Deployment of its own whose serving_models.config lists that servable and nothing else, whose probes ask
  for it, behind a headless Service of its own, with a disruption budget;
- the main TF Serving serves every other servable of the pipeline and not the gallery;
- the gateway's GATEWAY_SERVABLE_TARGETS names exactly the shards' Services (DNS name, namespace, gRPC port), its
  pipeline file names exactly those shards, and every call it makes lands on a TF Serving that serves the servable;
- the network policies let the gateway, and nothing else, reach every shard's gRPC port;
- changing the shard count is the one edit the page names, then `make deploy-files`.

kubectl missing: the tests skip, unless GATEWAY_REQUIRE_KUBECTL=1 (CI).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from app.config import Settings
from app.gallery.build import gallery_servables
from app.pipeline_config import PipelineConfig, load_pipeline_config, parse_pipeline_config
from app.serving.model_config import parse_model_config
from tests.support import k8s, programs

REPO = Path(__file__).resolve().parents[2]
COMPONENT = "deploy/k8s/components/search-shards"
PULL_MODELS = "deploy/k8s/components/pull-models"
DECLARATION = REPO / COMPONENT / "shards.toml"
OVERLAYS = ("gpu", "cpu")
NAMESPACE = "portrait"
HEALTHCHECK = "/config/healthcheck.sh"
GRPC_PORT = 8500
PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})  # where the base assumes Prometheus runs


@pytest.fixture(scope="module")
def kubectl() -> str:
    return programs.require("kubectl", "KUBECTL", package="kubectl")


@pytest.fixture(scope="module", params=OVERLAYS)
def docs(request: pytest.FixtureRequest, kubectl: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """An overlay of the user's own: one of the repository's overlays and the component, rendered."""
    overlay = k8s.user_overlay(
        tmp_path_factory.mktemp("my-cluster"), f"deploy/k8s/overlays/{request.param}", [COMPONENT]
    )
    return k8s.render(kubectl, overlay)


def declared(path: Path = DECLARATION) -> tuple[int, bool]:
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    return table["count"], table.get("partial", False)


def expected_shards(repo: Path = REPO) -> list[str]:
    """The shard servables `build-index --shards N` writes for the repository's pipeline file."""
    count, _ = declared(repo / COMPONENT / "shards.toml")
    return gallery_servables(load_pipeline_config(repo / "pipeline.toml"), count)


# -- reading the render --------------------------------------------------------------------------------------------


def pod_spec(docs: list[dict], deployment: str) -> dict:
    return k8s.find(docs, "Deployment", deployment)["spec"]["template"]["spec"]


def main_container(docs: list[dict], deployment: str, name: str) -> dict:
    return next(c for c in pod_spec(docs, deployment)["containers"] if c["name"] == name)


def env(container: dict) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def flags(container: dict) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def tf_servings(docs: list[dict]) -> dict[str, tuple[str, ...]]:
    """Every TF Serving Deployment of the render, with the servables its own --model_config_file lists."""
    served = {}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]
        for container in spec["containers"]:
            if container.get("command") == ["tensorflow_model_server"]:
                text = k8s.mounted_file(docs, spec, container, flags(container)["model_config_file"])
                config = parse_model_config(text, check_paths=False)
                served[doc["metadata"]["name"]] = tuple(servable.name for servable in config.servables)
    return served


def deployment_behind(docs: list[dict], target: str) -> tuple[str, dict]:
    """The one Deployment whose pods a gRPC target reaches (dns:///<service>.<namespace>.svc.cluster.local:<port>),
    and the Service's port entry; fails on anything else."""
    assert target.startswith("dns:///"), f"{target}: not the DNS resolver (every ready pod, round robin)"
    host, _, port = target.removeprefix("dns:///").rpartition(":")
    name, namespace, *domain = host.split(".")
    assert domain == ["svc", "cluster", "local"], target
    service = k8s.find(docs, "Service", name)
    assert service["metadata"]["namespace"] == namespace == NAMESPACE, target
    assert service["spec"]["clusterIP"] == "None", f"{name}: not headless"
    [entry] = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
    selected = [
        doc["metadata"]["name"] for doc in docs
        if doc["kind"] == "Deployment"
        and k8s.selects({"matchLabels": service["spec"]["selector"]}, doc["spec"]["template"]["metadata"]["labels"])
    ]  # fmt: skip
    assert len(selected) == 1, f"Service {name} selects the pods of {selected}"
    return selected[0], entry


def shard_deployments(docs: list[dict]) -> dict[str, str]:
    """Each shard servable and the Deployment the gateway's target for it reaches."""
    targets = Settings.load(environ=env(main_container(docs, "gateway", "gateway"))).servable_targets
    return {servable: deployment_behind(docs, target)[0] for servable, target in targets.items()}


# -- rendering -----------------------------------------------------------------------------------------------------


def test_it_renders_and_validates_strictly(docs: list[dict]) -> None:
    for doc in docs:
        k8s.validate(doc)  # raises ValidationError or SchemaNotFoundError
    assert {doc["metadata"].get("namespace") for doc in docs if doc["kind"] != "Namespace"} == {NAMESPACE}
    count, _ = declared()
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        names = {d["metadata"]["name"] for d in docs if d["kind"] == kind and "shard" in d["metadata"]["name"]}
        assert len(names) == count, (kind, names)


def test_the_overlay_in_the_docs_is_the_tested_one() -> None:
    text = (REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8")
    assert f"../{COMPONENT}" in text and f"{COMPONENT}/shards.toml" in text and "make deploy-files" in text


# -- TF Serving: one per shard, and the main one ---------------------------------------------------------------------


def test_each_shard_has_a_tf_serving_that_serves_it_and_nothing_else(docs: list[dict]) -> None:
    shards = shard_deployments(docs)
    assert list(shards) == expected_shards()
    assert len(set(shards.values())) == len(shards), shards  # a Deployment of its own each
    served = tf_servings(docs)
    for servable, deployment in shards.items():
        assert served[deployment] == (servable,), deployment
        spec = pod_spec(docs, deployment)
        serving = main_container(docs, deployment, "tf-serving")
        config = k8s.mounted_file(docs, spec, serving, flags(serving)["model_config_file"])
        [entry] = parse_model_config(config, check_paths=False).servables
        models = next(m for m in serving["volumeMounts"] if m["name"] == "models")
        assert entry.configured_base_path == f"{models['mountPath']}/{servable}"  # where build-index writes it
        assert models["readOnly"] is True


def test_every_servable_of_the_pipeline_is_served_once_and_called_where_it_is(docs: list[dict]) -> None:
    """The whole mapping: each servable the gateway calls lives on exactly one TF Serving Deployment, and the
    gateway's target for it (its own, or GATEWAY_SERVING_TARGET) reaches that Deployment's gRPC port."""
    gateway = main_container(docs, "gateway", "gateway")
    settings = Settings.load(environ=env(gateway))
    pipeline = parse_pipeline_config(
        k8s.mounted_file(docs, pod_spec(docs, "gateway"), gateway, str(settings.pipeline_path()))
    )
    served = tf_servings(docs)
    for servable in pipeline.servables:
        homes = [deployment for deployment, names in served.items() if servable in names]
        assert len(homes) == 1, f"{servable} is served by {homes}"
        target = settings.servable_targets.get(servable, settings.serving_target)
        deployment, port = deployment_behind(docs, target)
        assert deployment == homes[0], f"{servable}: the gateway calls {deployment}, it lives on {homes[0]}"
        assert port["name"] == "grpc"
        serving = main_container(docs, deployment, "tf-serving")
        named = {p["name"]: p["containerPort"] for p in serving["ports"]}
        assert named[port["targetPort"]] == GRPC_PORT == int(flags(serving)["port"])
    assert set(settings.servable_targets) == set(pipeline.search.shards)  # every shard, and only shards
    assert pipeline.search.servable not in {name for names in served.values() for name in names}


def test_the_probes_ask_each_server_for_its_own_servables(docs: list[dict]) -> None:
    pipeline = load_pipeline_config(REPO / "pipeline.toml")
    others = tuple(servable for servable in pipeline.servables if servable != pipeline.search.servable)
    wanted = {"tf-serving": others} | {
        deployment: (servable,) for servable, deployment in shard_deployments(docs).items()
    }
    for deployment, servables in wanted.items():
        serving = main_container(docs, deployment, "tf-serving")
        for probe in ("startupProbe", "readinessProbe"):
            assert serving[probe]["exec"]["command"] == ["bash", HEALTHCHECK, *servables], (deployment, probe)
        assert serving["livenessProbe"]["tcpSocket"]["port"] == "grpc"
        script = k8s.mounted_file(docs, pod_spec(docs, deployment), serving, HEALTHCHECK)
        assert script == (REPO / "deploy" / "healthcheck.sh").read_text(encoding="utf-8")
        assert tf_servings(docs)[deployment] == servables


def test_shards_run_as_the_main_tf_serving_does(docs: list[dict]) -> None:
    main = main_container(docs, "tf-serving", "tf-serving")
    for deployment in shard_deployments(docs).values():
        spec = pod_spec(docs, deployment)
        serving = main_container(docs, deployment, "tf-serving")
        assert (serving["command"], serving["args"]) == (main["command"], main["args"])  # docker-compose's flags
        assert serving["image"] == "tensorflow/serving:2.20.0"  # on CPU in either overlay, pinned
        assert "nvidia.com/gpu" not in serving["resources"]["limits"] and serving["resources"]["limits"]["memory"]
        assert serving["resources"]["requests"]["cpu"] and serving["resources"]["requests"]["memory"]
        context = {**spec["securityContext"], **serving["securityContext"]}
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert k8s.find(docs, "Deployment", deployment)["spec"]["replicas"] >= 2


def test_each_shard_has_a_disruption_budget_of_its_own(docs: list[dict]) -> None:
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for deployment in shard_deployments(docs).values():
        budget = k8s.find(docs, "PodDisruptionBudget", deployment)
        assert budget["spec"]["maxUnavailable"] == 1  # as the base's tf-serving
        selected = [
            d["metadata"]["name"] for d in deployments
            if k8s.selects(budget["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]  # fmt: skip
        assert selected == [deployment]


# -- the gateway -----------------------------------------------------------------------------------------------------


def test_the_gateways_pipeline_file_names_exactly_the_shards(docs: list[dict]) -> None:
    gateway = main_container(docs, "gateway", "gateway")
    settings = Settings.load(environ=env(gateway))  # every GATEWAY_* value is one the gateway accepts
    text = k8s.mounted_file(docs, pod_spec(docs, "gateway"), gateway, str(settings.pipeline_path()))
    sharded = parse_pipeline_config(text)
    _, partial = declared()
    assert list(sharded.search.shards) == expected_shards() and sharded.search.partial is partial
    # Nothing else of the repository's pipeline file changed.
    root = load_pipeline_config(REPO / "pipeline.toml")
    assert sharded.model_dump(exclude={"source"}) == root.model_copy(
        update={"search": root.search.model_copy(update={"shards": sharded.search.shards, "partial": partial})}
    ).model_dump(exclude={"source"})


def test_the_gateways_model_config_lists_every_servable_of_the_cluster(docs: list[dict]) -> None:
    gateway = main_container(docs, "gateway", "gateway")
    settings = Settings.load(environ=env(gateway))
    text = k8s.mounted_file(docs, pod_spec(docs, "gateway"), gateway, str(settings.model_config_file))
    listed = [servable.name for servable in parse_model_config(text, check_paths=False).servables]
    served = tf_servings(docs)
    assert sorted(listed) == sorted(name for names in served.values() for name in names)
    assert settings.models_root == Path("/models")  # the gallery's thumbnails, in every shard's folder


def test_the_gateway_still_calls_the_main_tf_serving_for_the_rest(docs: list[dict]) -> None:
    target = env(main_container(docs, "gateway", "gateway"))["GATEWAY_SERVING_TARGET"]
    assert deployment_behind(docs, target)[0] == "tf-serving"


# -- network policies ------------------------------------------------------------------------------------------------


def test_only_the_gateway_reaches_the_shards_grpc_port(docs: list[dict]) -> None:
    gateway = k8s.find(docs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    models_job = k8s.find(docs, "Job", "models")["spec"]["template"]["metadata"].get("labels", {})
    main = k8s.find(docs, "Deployment", "tf-serving")["spec"]["template"]["metadata"]["labels"]
    for deployment in shard_deployments(docs).values():
        cases = {
            ("gateway", NAMESPACE, GRPC_PORT): True,
            ("gateway", NAMESPACE, 8501): False,
            ("prometheus", PROMETHEUS[0], 8501): True,  # TF Serving's metrics, as on the main one
            ("prometheus", PROMETHEUS[0], GRPC_PORT): False,
            ("models job", NAMESPACE, GRPC_PORT): False,
            ("main tf-serving", NAMESPACE, GRPC_PORT): False,
            ("other", "elsewhere", GRPC_PORT): False,
        }
        pods = {
            "gateway": gateway, "prometheus": PROMETHEUS[1], "models job": models_job, "main tf-serving": main,
            "other": {"app": "other"},
        }  # fmt: skip
        found = {case: k8s.reaches(docs, case[1], pods[case[0]], deployment, case[2]) for case in cases}
        assert found == cases, deployment


# -- models from a bucket ----------------------------------------------------------------------------------------------


def test_with_pull_models_each_shard_pulls_only_its_own_servable(kubectl: str, tmp_path: Path) -> None:
    """The two components together, in the order docs/kubernetes.md gives: each shard's pod fills a volume of its
    own with $(MODEL_URI)/<its servable> before its server starts, and the shared claim is gone."""
    source = {"name": "model-source", "options": {"disableNameSuffixHash": True}, "literals": ["MODEL_URI=s3://b/p"]}
    overlay = k8s.user_overlay(
        tmp_path, "deploy/k8s/overlays/gpu", [COMPONENT, PULL_MODELS], configMapGenerator=[source]
    )
    docs = k8s.render(kubectl, overlay)
    for doc in docs:
        k8s.validate(doc)
    assert not [doc for doc in docs if doc["kind"] in ("PersistentVolumeClaim", "Job")]
    gateway_image = main_container(docs, "gateway", "gateway")["image"]
    for servable, deployment in shard_deployments(docs).items():
        template = k8s.find(docs, "Deployment", deployment)["spec"]["template"]
        [init] = template["spec"]["initContainers"]
        assert init["image"] == gateway_image  # the thin image
        assert init["command"][:5] == ["flask", "--app", "app", "pull-models", "--if-missing"]
        assert init["command"][5:] == ["$(MODEL_URI)/$(SEARCH_SHARD)", "/models/$(SEARCH_SHARD)"]
        [field] = [e["valueFrom"]["fieldRef"]["fieldPath"] for e in init["env"] if e["name"] == "SEARCH_SHARD"]
        key = field.removeprefix("metadata.annotations['").removesuffix("']")
        assert template["metadata"]["annotations"][key] == servable  # the downward API names the pod's own shard
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert "emptyDir" in volumes["models"] and "persistentVolumeClaim" not in volumes["models"]
        serving = main_container(docs, deployment, "tf-serving")
        [entry] = parse_model_config(
            k8s.mounted_file(docs, template["spec"], serving, flags(serving)["model_config_file"]), check_paths=False
        ).servables
        reads = next(m for m in serving["volumeMounts"] if m["name"] == "models")
        writes = next(m for m in init["volumeMounts"] if m["name"] == "models")
        assert entry.configured_base_path == f"{reads['mountPath']}/{servable}" == f"{writes['mountPath']}/{servable}"
        assert reads["readOnly"] is True and not writes.get("readOnly")
        context = {**template["spec"]["securityContext"], **init["securityContext"]}
        assert context["runAsNonRoot"] is True and context["readOnlyRootFilesystem"] is True


# -- changing the shard count ----------------------------------------------------------------------------------------


def test_the_shard_count_is_one_edit_and_make_deploy_files(kubectl: str, tmp_path: Path) -> None:
    """As docs/kubernetes.md says: edit shards.toml, run the script; the render follows, and no shard of the old
    count is left behind."""
    repo = tmp_path / "repo"
    for path in ("serving_models.config", "pipeline.toml", "deploy", "scripts/sync_deploy_files.py"):
        source, copy = REPO / path, repo / path
        copy.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy)
    declaration = repo / COMPONENT / "shards.toml"
    declaration.write_text(
        declaration.read_text(encoding="utf-8").replace(f"count = {declared()[0]}\n", "count = 3\n")
        .replace("partial = false\n", "partial = true\n"),
        encoding="utf-8",
    )  # fmt: skip
    assert declared(declaration) == (3, True)
    script = [sys.executable, str(repo / "scripts" / "sync_deploy_files.py")]
    check = subprocess.run([*script, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1 and "search-shards/generated/shards.yaml: differs" in check.stderr, check.stderr
    subprocess.run(script, check=True, capture_output=True, timeout=60)

    docs = k8s.render(kubectl, k8s.user_overlay(tmp_path / "my-cluster", "deploy/k8s/overlays/gpu", [COMPONENT], repo))
    for doc in docs:
        k8s.validate(doc)
    shards = shard_deployments(docs)
    assert list(shards) == expected_shards(repo) == [f"{PipelineConfig().search.servable}_{i}" for i in range(3)]
    assert {deployment: names for deployment, names in tf_servings(docs).items() if deployment in shards.values()} == {
        deployment: (servable,) for servable, deployment in shards.items()
    }
    gateway = main_container(docs, "gateway", "gateway")
    path = Settings.load(environ=env(gateway)).pipeline_path()
    sharded = parse_pipeline_config(k8s.mounted_file(docs, pod_spec(docs, "gateway"), gateway, str(path)))
    assert list(sharded.search.shards) == list(shards) and sharded.search.partial is True
    assert len([d for d in docs if d["kind"] == "PodDisruptionBudget" and "shard" in d["metadata"]["name"]]) == 3
