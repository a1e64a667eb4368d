"""Custom resources validated offline against their CustomResourceDefinition's OpenAPI schema, closed as it should be.

An API server prunes fields a structural schema does not declare, silently: a misspelt ``storageUrl`` would be
dropped and the resource accepted without it. So the schema of each kept CRD (crds/, see crds/README.md) is
turned into a JSON Schema whose every object that declares its properties accepts no others
(``additionalProperties: false``), except where the CRD keeps unknown fields on purpose
(``x-kubernetes-preserve-unknown-fields``) or describes a map (``additionalProperties`` of its own). Kubernetes'
``x-kubernetes-int-or-string`` and ``nullable`` become JSON Schema's terms; the object's ``metadata`` gets a
name at least.

    errors = crds.errors(document)    # [] when it validates; else "spec.predictor.model: 'storageUrl' ..."
"""

from __future__ import annotations

import copy
import gzip
from functools import cache
from pathlib import Path

import jsonschema
import yaml

FOLDER = Path(__file__).with_name("crds")
KEPT = {
    ("serving.kserve.io", "InferenceService"): "serving.kserve.io_inferenceservices.yaml.gz",
    ("machinelearning.seldon.io", "SeldonDeployment"): "machinelearning.seldon.io_seldondeployments.yaml.gz",
}


class UnknownKind(LookupError):
    """No CRD is kept for the document's apiVersion and kind."""


@cache
def _crd(file: str) -> dict:
    with gzip.open(FOLDER / file, "rt", encoding="utf-8") as text:
        return yaml.safe_load(text)


def close(schema: dict) -> dict:
    """The JSON Schema Kubernetes' pruning amounts to: unknown fields are errors instead of silently dropped."""
    schema = copy.deepcopy(schema)

    def visit(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields", False)
        if "properties" in node and "additionalProperties" not in node and not keeps_unknown:
            node["additionalProperties"] = False
        for value in node.values():
            visit(value)

    visit(schema)
    return schema


@cache
def _validator(group: str, kind: str, version: str) -> jsonschema.Draft7Validator:
    file = KEPT.get((group, kind))
    if file is None:
        raise UnknownKind(f"no CRD kept for {group}/{kind}")
    crd = _crd(file)
    served = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    if version not in served:
        raise UnknownKind(f"{group}/{kind}: the CRD serves {sorted(served)}, not {version!r}")
    schema = close(served[version]["schema"]["openAPIV3Schema"])
    # The CRD leaves metadata to the API server: a name is what every resource needs.
    schema["properties"]["metadata"] = {"type": "object", "required": ["name"]}
    schema.setdefault("required", [])
    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
    return jsonschema.Draft7Validator(schema)


def errors(document: dict) -> list[str]:
    """Every way ``document`` fails its CRD's closed schema, as "path: message"; [] when it validates."""
    group, _, version = document.get("apiVersion", "").rpartition("/")
    validator = _validator(group, document.get("kind", ""), version)
    found = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in found]


def source(file: str) -> str:
    """Where a kept CRD came from, as crds/README.md says."""
    for line in (FOLDER / "README.md").read_text(encoding="utf-8").splitlines():
        if file in line:
            return line
    raise LookupError(file)
