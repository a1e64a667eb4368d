"""The Kubernetes manifests of deploy/k8s as the tests read them: rendered with kubectl's Kustomize (no flag, as
`kubectl apply -k` renders), validated strictly against a pinned Kubernetes version, and asked what a cluster would
only show at run time: which file a container finds at a path, and whether the NetworkPolicies let one pod reach
another's port.

    docs = k8s.render(kubectl, k8s.user_overlay(tmp_path, "deploy/k8s/overlays/gpu", ["deploy/k8s/components/x"]))
    k8s.find(docs, "Deployment", "gateway")
    k8s.reaches(docs, "portrait", {"app.kubernetes.io/name": "gateway"}, "tf-serving", 8500)
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# The Kubernetes version the manifests are written for; kubernetes-validate (pinned in requirements-dev.txt)
# carries its schemas. A newer cluster serves every API used here too (none is deprecated in 1.32).
KUBERNETES_VERSION = "1.32.0"


def render(kubectl: str, folder: Path) -> list[dict]:
    """The documents `kubectl kustomize` renders from ``folder``, with default options; fails with its error."""
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def user_overlay(folder: Path, resource: str, components: Sequence[str] = (), repo: Path = REPO, **more: Any) -> Path:
    """An overlay of a user's own, as docs/kubernetes.md writes one: ``resource`` (e.g. deploy/k8s/overlays/gpu)
    and ``components`` of ``repo``, by relative paths (Kustomize refuses absolute ones), and ``more`` fields
    (e.g. configMapGenerator)."""
    folder.mkdir(parents=True, exist_ok=True)
    up = Path(os.path.relpath(repo, folder))
    spec = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [str(up / resource)],
        "components": [str(up / component) for component in components],
        **more,
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    return folder


def validate(doc: dict) -> None:
    """Strict validation: unknown fields are errors, and so is a kind the schemas do not know."""
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def mounted_file(docs: list[dict], spec: dict, container_spec: dict, path: str) -> str:
    """The text of ``path`` inside a container, when a generated ConfigMap provides it; fails otherwise."""
    for mount in container_spec.get("volumeMounts", []):
        folder = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(folder):
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            assert "configMap" in volume, f"{path} is on volume {mount['name']}, not a ConfigMap"
            data = find(docs, "ConfigMap", volume["configMap"]["name"])["data"]
            key = path.removeprefix(folder)
            assert key in data, f"{path}: ConfigMap {volume['configMap']['name']} has no key {key!r}"
            return data[key]
    pytest.fail(f"nothing is mounted at {path}")


def selects(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a label selector picks an object with ``labels`` (matchLabels only, as the manifests write them)."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is modelled here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


def _names_of(port: int, named: dict[str, int]) -> list[str]:
    return [name for name, number in named.items() if number == port]


def reaches(docs: list[dict], namespace: str, labels: dict[str, str], deployment: str, port: int) -> bool:
    """Whether the rendered NetworkPolicies let a pod (``namespace``, ``labels``) open TCP ``port`` on the pods of
    ``deployment``, as Kubernetes decides it: pods no Ingress policy selects take anything; otherwise some rule
    of a policy that selects them must admit both the port and the pod."""
    template = find(docs, "Deployment", deployment)["spec"]["template"]
    target = template["metadata"]["labels"]
    named = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    policies = [
        doc for doc in docs
        if doc["kind"] == "NetworkPolicy" and "Ingress" in doc["spec"]["policyTypes"]
        and selects(doc["spec"]["podSelector"], target)
    ]  # fmt: skip
    if not policies:
        return True
    source_namespace = {"kubernetes.io/metadata.name": namespace}  # every namespace carries its name as a label
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")  # none: every port; an entry without a port: every port of its protocol
            if ports is not None and not any(
                entry.get("protocol", "TCP") == "TCP" and entry.get("port", port) in (port, *_names_of(port, named))
                for entry in ports
            ):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                assert "ipBlock" not in peer, "ipBlock peers are not modelled here"
                if "namespaceSelector" in peer:
                    same_namespace = selects(peer["namespaceSelector"], source_namespace)
                else:
                    same_namespace = namespace == policy["metadata"]["namespace"]
                if same_namespace and selects(peer.get("podSelector", {}), labels):
                    return True
    return False
