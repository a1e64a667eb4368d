"""deploy/k8s/components/pull-models: an overlay as docs/kubernetes.md writes it (the gpu overlay, the component, a
model-source ConfigMap) renders with no flag and validates strictly; TF Serving's and the gateway's pods pull
MODEL_URI into their own models volume with the thin image before they start, with KServe's credential
variables from an optional Secret; the shared claim and the export job are gone.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from app.serving.model_config import parse_model_config
from tests.support import programs

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.32.0"
MODEL_URI = "s3://my-bucket/portrait"


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    kubectl = programs.require("kubectl", "KUBECTL", package="kubectl")
    overlay = tmp_path_factory.mktemp("my-cluster")
    up = Path(os.path.relpath(REPO, overlay))
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [str(up / "deploy/k8s/overlays/gpu")],
                "components": [str(up / "deploy/k8s/components/pull-models")],
                "configMapGenerator": [
                    {
                        "name": "model-source",
                        "options": {"disableNameSuffixHash": True},
                        "literals": [f"MODEL_URI={MODEL_URI}", "AWS_ENDPOINT_URL=https://minio.storage:9000"],
                    }
                ],
            }
        )
    )
    result = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod(docs: list[dict], name: str) -> dict:
    [deployment] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return deployment["spec"]["template"]["spec"]


def test_it_renders_and_validates_strictly(docs: list[dict]) -> None:
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Job", "models") not in kinds and ("PersistentVolumeClaim", "models") not in kinds


@pytest.mark.parametrize(("deployment", "container"), [("tf-serving", "tf-serving"), ("gateway", "gateway")])
def test_each_pod_pulls_the_model_uri_into_its_own_volume_first(docs: list[dict], deployment: str, container: str):
    spec = pod(docs, deployment)
    [init] = spec["initContainers"]
    gateway_image = next(c for c in pod(docs, "gateway")["containers"] if c["name"] == "gateway")["image"]
    assert init["image"] == gateway_image  # the thin image: no TensorFlow
    assert init["command"][:4] == ["flask", "--app", "app", "pull-models"] and "--if-missing" in init["command"]
    assert init["command"][-2:] == ["$(MODEL_URI)", "/models"]
    [source] = [e["configMapRef"]["name"] for e in init["envFrom"]]
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source]
    assert config_map["data"]["MODEL_URI"] == MODEL_URI
    # KServe's way: the keys as variables from the Secret, the Secret mounted at /var/secrets; both optional.
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"] if "valueFrom" in e}
    assert secrets == {
        key: {"name": "model-storage", "key": key, "optional": True}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    }
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert volumes[mounts["model-storage"]["name"]]["secret"] == {"secretName": "model-storage", "optional": True}
    assert mounts["model-storage"]["mountPath"] == "/var/secrets"
    # It writes where the server then reads, read-only, a volume of the pod's own.
    main = next(c for c in spec["containers"] if c["name"] == container)
    reads = next(m for m in main["volumeMounts"] if m["name"] == "models")
    assert mounts["models"]["mountPath"] == reads["mountPath"] == "/models" and reads["readOnly"] is True
    assert not mounts["models"].get("readOnly") and "emptyDir" in volumes["models"]
    assert "persistentVolumeClaim" not in volumes["models"]


def test_tf_serving_finds_the_pulled_servables_where_its_config_says(docs: list[dict]) -> None:
    config = (REPO / "serving_models.config").read_text(encoding="utf-8")
    assert all(s.configured_base_path.startswith("/models/") for s in parse_model_config(config, check_paths=False)
               .servables)  # fmt: skip


def test_the_init_containers_run_as_the_pods_do(docs: list[dict]) -> None:
    for deployment in ("tf-serving", "gateway"):
        spec = pod(docs, deployment)
        context = {**spec["securityContext"], **spec["initContainers"][0]["securityContext"]}
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert "memory" in spec["initContainers"][0]["resources"]["limits"]
