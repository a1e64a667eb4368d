"""One source of truth for `make run`, docker-compose and Kubernetes: the kustomizations' files/ folders are copies
written by scripts/sync_deploy_files.py, and they cannot drift from serving_models.config, pipeline.toml and deploy/.

Why copies and not symbolic links: kustomize resolves a link and refuses it like the path it leads to (shown
below), so a link would bring back the --load-restrictor flag that `kubectl apply -k` does not have.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.support import programs

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "sync_deploy_files.py"
FIX = "python scripts/sync_deploy_files.py"


@pytest.fixture(scope="module")
def sync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_deploy_files", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_copy_is_what_its_source_makes() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{result.stderr}(run: {FIX})"


def test_every_file_a_kustomization_reads_is_a_written_copy(sync: ModuleType) -> None:
    """No generator reads a file by hand-made copy: each is one the script writes, and each copy is read."""
    copies = {REPO / path for path in sync.copies()}
    read = set()
    for kustomization in sorted(REPO.glob("deploy/**/kustomization.yaml")):
        spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        for generator in spec.get("configMapGenerator", []):
            read |= {kustomization.parent / entry.rpartition("=")[2] for entry in generator.get("files", [])}
    assert read == copies


def test_a_changed_source_is_reported_and_rewritten(sync: ModuleType, tmp_path: Path) -> None:
    for path in ("serving_models.config", "pipeline.toml", "deploy"):
        source = REPO / path
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / path)
    assert sync.drifted(tmp_path) == []  # the copies came along with deploy/
    (tmp_path / "deploy" / "monitoring.config").write_text("prometheus_config { enable: false }\n")
    (tmp_path / "deploy" / "batching" / "twingan_latent_encoder.pbtxt").unlink()
    assert sync.drifted(tmp_path) == [
        Path("deploy/k8s/base/files/batching/twingan_latent_encoder.pbtxt"),  # its source is gone
        Path("deploy/k8s/base/files/monitoring.config"),
    ]
    sync.write(tmp_path)
    assert sync.drifted(tmp_path) == []
    assert (tmp_path / "deploy/k8s/base/files/monitoring.config").read_text() == "prometheus_config { enable: false }\n"


def test_kserve_and_seldon_read_the_models_where_their_initializers_put_them(sync: ModuleType) -> None:
    model_config = (REPO / "serving_models.config").read_text(encoding="utf-8")
    for platform in ("kserve", "seldon"):
        copy = (REPO / "deploy" / platform / "files" / "serving_models.config").read_text(encoding="utf-8")
        assert copy == model_config.replace('base_path: "/models/', 'base_path: "/mnt/models/')
        assert copy.count("/mnt/models/") == model_config.count('base_path: "/models/') > 0


def test_kustomize_refuses_a_symbolic_link_out_of_its_folder(tmp_path: Path) -> None:
    """The reason for copies: a link to the repository's file is refused as the file itself would be."""
    kubectl = programs.require("kubectl", "KUBECTL", package="kubectl")
    folder = tmp_path / "kustomization"
    folder.mkdir()
    (folder / "serving_models.config").symlink_to(REPO / "serving_models.config")
    (folder / "kustomization.yaml").write_text(
        "configMapGenerator:\n  - name: serving-config\n    files:\n      - serving_models.config\n"
    )
    result = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "is not in or below" in result.stderr, result.stderr
