"""deploy/kserve and deploy/seldon: rendered with kubectl's Kustomize (no flags), each custom resource validated
against its CRD's closed OpenAPI schema (tests/support/crds/, pinned tags), every other document strictly against
Kubernetes 1.32; a misspelt field is caught; and the wiring a cluster would only show at run time holds: TF Serving
reads serving_models.config where the storage initializer puts the models, and the gateway reaches its gRPC port.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app.serving.model_config import parse_model_config
from tests.support import crds, programs

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.32.0"
# KServe's kserve-tensorflow-serving ClusterServingRuntime (config/runtimes/, v0.20.0) starts TF Serving with
# --port=9000 (gRPC) --rest_api_port=8080 --model_base_path=/mnt/models.
KSERVE_TF_SERVING_GRPC_PORT = 9000
MODELS_MOUNT = "/mnt/models"  # where both projects' storage initializers write


@pytest.fixture(scope="module")
def kubectl() -> str:
    return programs.require("kubectl", "KUBECTL", package="kubectl")


def render(kubectl: str, folder: str) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(REPO / "deploy" / folder)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def kserve(kubectl: str) -> list[dict]:
    return render(kubectl, "kserve")


@pytest.fixture(scope="module")
def seldon(kubectl: str) -> list[dict]:
    return render(kubectl, "seldon")


def one(docs: list[dict], kind: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args if "=" in arg)


def mounted_text(docs: list[dict], volumes: list[dict], mounts: list[dict], path: str) -> str:
    """The content of ``path`` in a container whose ``mounts`` put a ConfigMap there."""
    for mount in mounts:
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder):
            [volume] = [v for v in volumes if v["name"] == mount["name"]]
            [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] ==
                            volume["configMap"]["name"]]  # fmt: skip
            return config_map["data"][path.removeprefix(folder)]
    pytest.fail(f"nothing is mounted at {path}")


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["kserve", "seldon"])
def test_every_document_validates(kubectl: str, folder: str) -> None:
    docs = render(kubectl, folder)
    custom = [d for d in docs if d["kind"] in ("InferenceService", "SeldonDeployment")]
    assert len(custom) == 1
    for doc in docs:
        if doc in custom:
            assert crds.errors(doc) == [], doc["kind"]
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {d["metadata"]["namespace"] for d in docs} == {"portrait"}


@pytest.mark.parametrize(
    ("folder", "path", "misspelt"),
    [
        ("kserve", ["spec", "predictor", "model"], "storageUrl"),
        ("kserve", ["spec", "transformer", "containers", 0], "comand"),
        ("kserve", ["spec"], "transformers"),
        ("seldon", ["spec", "predictors", 0, "graph"], "modelURI"),
        ("seldon", ["spec", "predictors", 0, "componentSpecs", 0, "spec", "containers", 1], "volumeMount"),
    ],
)
def test_a_misspelt_field_is_caught(kubectl: str, folder: str, path: list, misspelt: str) -> None:
    """Kubernetes would prune it and accept the rest; the closed schema refuses it, and the open one would not."""
    [doc] = [d for d in render(kubectl, folder) if d["kind"] in ("InferenceService", "SeldonDeployment")]
    wrong = copy.deepcopy(doc)
    node = wrong
    for step in path:
        node = node[step]
    right = next((key for key in node if key.lower() == misspelt.lower().rstrip("s")), None)
    node[misspelt] = node.pop(right) if right and right != misspelt else "x"
    found = crds.errors(wrong)
    assert any(misspelt in error and "additional" in error.lower() for error in found), found

    version = doc["apiVersion"].rpartition("/")[2]
    crd = crds._crd(crds.KEPT[(doc["apiVersion"].rpartition("/")[0], doc["kind"])])
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    as_published = served["schema"]["openAPIV3Schema"]
    assert not any(misspelt in e.message for e in jsonschema.Draft7Validator(as_published).iter_errors(wrong))


def test_a_wrong_type_and_a_missing_field_are_caught(kserve: list[dict], seldon: list[dict]) -> None:
    service = copy.deepcopy(one(kserve, "InferenceService"))
    service["spec"]["predictor"]["minReplicas"] = "two"
    assert any("minReplicas" in e and "'two' is not of type 'integer'" in e for e in crds.errors(service))
    deployment = copy.deepcopy(one(seldon, "SeldonDeployment"))
    del deployment["spec"]["predictors"][0]["graph"]["name"]
    assert any("'name' is a required property" in e for e in crds.errors(deployment))
    with pytest.raises(crds.UnknownKind):
        crds.errors({"apiVersion": "serving.kserve.io/v1alpha1", "kind": "InferenceService", "metadata": {}})


def test_the_kept_crds_are_the_upstream_files() -> None:
    for file in crds.KEPT.values():
        line = crds.source(file)
        digest = re.search(r"`([0-9a-f]{64})`", line)
        assert digest, line
        with gzip.open(crds.FOLDER / file, "rb") as text:
            assert hashlib.sha256(text.read()).hexdigest() == digest[1], file


# -- KServe's wiring -------------------------------------------------------------------------------------------


def test_kserve_tf_serving_reads_the_models_where_the_initializer_puts_them(kserve: list[dict]) -> None:
    predictor = one(kserve, "InferenceService")["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow" and re.match(r"^(s3|gs|https?)://", model["storageUri"])
    config_path = flags(model["args"])["model_config_file"]
    config = mounted_text(kserve, predictor["volumes"], model["volumeMounts"], config_path)
    servables = parse_model_config(config, check_paths=False).servables
    assert {s.name for s in servables} == {"face_detection", "twingan_latent_encoder", "latent_search_model",
                                           "ugatit_selfie2anime"}  # fmt: skip
    assert all(s.configured_base_path.startswith(MODELS_MOUNT + "/") for s in servables)


def test_kserve_transformer_is_the_gateway_reaching_tf_serving_over_grpc(kserve: list[dict]) -> None:
    spec = one(kserve, "InferenceService")["spec"]
    [gateway] = spec["transformer"]["containers"]
    assert gateway["command"] == ["python", "-m", "app.serve"] and "args" not in gateway  # KServe's come after
    env = {item["name"]: item["value"] for item in gateway["env"]}
    assert env["STORAGE_URI"] == spec["predictor"]["model"]["storageUri"]  # thumbnails, from the same tree
    assert "GATEWAY_SERVING_TARGET" not in env  # app.serve derives it from --predictor_host
    # The predictor's Service (port 80) leads to its first port: TF Serving's gRPC port, spoken as HTTP/2.
    first = spec["predictor"]["model"]["ports"][0]
    assert first == {"name": "h2c", "containerPort": KSERVE_TF_SERVING_GRPC_PORT, "protocol": "TCP"}
    assert gateway["ports"][0]["containerPort"] == 8080  # KServe's --http_port
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    config = mounted_text(kserve, spec["transformer"]["volumes"], gateway["volumeMounts"], env["GATEWAY_MODEL_CONFIG"])
    assert config == (REPO / "deploy" / "kserve" / "files" / "serving_models.config").read_text(encoding="utf-8")


def test_kserve_service_account_lists_the_storage_secret(kserve: list[dict]) -> None:
    account = one(kserve, "ServiceAccount")
    predictor = one(kserve, "InferenceService")["spec"]["predictor"]
    assert predictor["serviceAccountName"] == account["metadata"]["name"]
    assert account["secrets"] == [{"name": "model-storage"}]


# -- Seldon's wiring -------------------------------------------------------------------------------------------


def test_seldon_tf_serving_serves_every_servable_from_the_model_uri(seldon: list[dict]) -> None:
    predictor = one(seldon, "SeldonDeployment")["spec"]["predictors"][0]
    graph = predictor["graph"]
    assert graph["implementation"] == "TENSORFLOW_SERVER" and re.match(r"^(s3|gs|https?)://", graph["modelUri"])
    pod = predictor["componentSpecs"][0]["spec"]
    serving = next(c for c in pod["containers"] if c["name"] == graph["name"])  # Seldon keeps its args
    args = flags(serving["args"])
    assert int(args["port"]) == graph["endpoint"]["grpcPort"] and int(args["rest_api_port"]) == graph["endpoint"][
        "httpPort"]  # fmt: skip
    config = mounted_text(seldon, pod["volumes"], serving["volumeMounts"], args["model_config_file"])
    servables = parse_model_config(config, check_paths=False).servables
    assert len(servables) == 4 and all(s.configured_base_path.startswith(MODELS_MOUNT + "/") for s in servables)


def test_seldon_gateway_sits_beside_tf_serving_and_has_a_service(seldon: list[dict]) -> None:
    deployment = one(seldon, "SeldonDeployment")
    predictor = deployment["spec"]["predictors"][0]
    component = predictor["componentSpecs"][0]
    gateway = next(c for c in component["spec"]["containers"] if c["name"] == "gateway")
    env = {item["name"]: item["value"] for item in gateway["env"]}
    assert env["GATEWAY_SERVING_TARGET"] == f"127.0.0.1:{predictor['graph']['endpoint']['grpcPort']}"
    # Seldon's storage initializer mounts its volume, <node>-provision-location, at /mnt/models.
    models = next(m for m in gateway["volumeMounts"] if m["mountPath"] == MODELS_MOUNT)
    assert models["name"] == f"{predictor['graph']['name']}-provision-location" and models["readOnly"] is True
    service = one(seldon, "Service")
    assert service["spec"]["selector"].items() <= component["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == int(env["GATEWAY_BIND"].rpartition(":")[2])
    assert gateway["ports"][0]["containerPort"] == service["spec"]["ports"][0]["targetPort"]
