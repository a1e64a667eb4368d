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

from app.gallery.build import gallery_servables
from app.pipeline_config import STAGE_NAMES, PipelineConfig, parse_pipeline_config
from app.serving.model_config import parse_model_config
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
    """No generator reads a hand-made copy: each file it reads is one the script writes; and each file the script
    writes is read (by a generator, or as a resource, a patch or a component's kustomization.yaml)."""
    written = {(REPO / path).resolve() for path in sync.expected()}
    read, used = set(), set()
    for kustomization in sorted(REPO.glob("deploy/**/kustomization.yaml")):
        spec = yaml.safe_load(kustomization.read_text(encoding="utf-8"))
        folder = kustomization.parent
        for generator in spec.get("configMapGenerator", []):
            read |= {(folder / entry.rpartition("=")[2]).resolve() for entry in generator.get("files", [])}
        used |= {(folder / entry).resolve() for entry in spec.get("resources", [])}
        used |= {(folder / patch["path"]).resolve() for patch in spec.get("patches", []) if "path" in patch}
        used |= {(folder / entry / "kustomization.yaml").resolve() for entry in spec.get("components", [])}
    assert read <= written
    assert written <= read | used, sorted(written - read - used)


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


# -- the sharded gallery's component (deploy/k8s/components/search-shards/generated) -------------------------------

LABELLED_CONFIG = """# the user's own, with policies, labels and comments that look like syntax
model_config_list {
  config {
    name: "detector"  # a comment with a brace { and a "quote"
    base_path: "/models/detector"
    model_platform: "tensorflow"
  }
  config {
    name: "faces"
    base_path: "/models/galleries/faces"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
}
"""


def test_the_script_names_shards_and_stages_as_the_gateway_does(sync: ModuleType) -> None:
    """The script imports nothing of the gateway's; what it knows of it is held to the gateway here."""
    gateways = {stage: getattr(PipelineConfig(), stage).servable for stage in STAGE_NAMES}
    assert gateways == sync.DEFAULT_SERVABLES
    for text in ((REPO / "pipeline.toml").read_text(encoding="utf-8"), '[search]\nservable = "faces"\n', ""):
        plan = sync.shard_plan(text, "count = 3\n")
        assert list(plan.shards) == gallery_servables(parse_pipeline_config(text), 3)  # as build-index --shards 3


def test_each_shard_takes_the_search_servables_config_renamed(sync: ModuleType) -> None:
    plan = sync.shard_plan('[search]\nservable = "faces"\n', "count = 2\npartial = true\n")
    main, everything, own = sync.sharded_model_configs(LABELLED_CONFIG, plan)
    faces = parse_model_config(LABELLED_CONFIG, check_paths=False).get("faces")
    for index, shard in enumerate(("faces_0", "faces_1")):
        [servable] = parse_model_config(own[shard], check_paths=False).servables
        assert servable.name == shard and servable.configured_base_path == f"/models/galleries/{shard}"
        assert servable.policy == faces.policy and dict(servable.labels) == {"stable": 3, "canary": 4}
        assert shard == plan.shards[index]
    assert parse_model_config(main, check_paths=False).names == ("detector",)
    assert parse_model_config(everything, check_paths=False).names == ("detector", "faces_0", "faces_1")
    assert '# a comment with a brace { and a "quote"' in main  # the rest as it was written


@pytest.mark.parametrize(
    "layout",
    [
        'model_config_list { config { name: "a" base_path: "/models/a" model_platform: "tensorflow" } '
        'config: { name: "faces" base_path: "/models/faces" model_platform: "tensorflow" } }',
        'model_config_list {\n  config\n  {\n    name: "faces"  # the gallery\n    base_path: "/models/faces"\n'
        '    model_platform: "tensorflow"\n  }  # a comment after it\n  config: { name: "a" base_path: "/models/a" '
        'model_platform: "tensorflow" }\n}\n',
    ],
)
def test_the_config_blocks_are_found_however_they_are_laid_out(sync: ModuleType, layout: str) -> None:
    plan = sync.shard_plan('[search]\nservable = "faces"\n', "count = 2\n")
    main, everything, own = sync.sharded_model_configs(layout, plan)
    assert parse_model_config(main, check_paths=False).names == ("a",)
    assert sorted(parse_model_config(everything, check_paths=False).names) == ["a", "faces_0", "faces_1"]
    for shard in plan.shards:
        assert parse_model_config(own[shard], check_paths=False).names == (shard,)


def test_the_sharded_pipeline_file_is_the_root_one_naming_the_shards(sync: ModuleType) -> None:
    root = (REPO / "pipeline.toml").read_text(encoding="utf-8")
    plan = sync.shard_plan(root, "count = 2\npartial = true\n")
    sharded = parse_pipeline_config(sync.sharded_pipeline(root, plan))
    assert sharded.search.shards == plan.shards and sharded.search.partial is True
    assert sharded.detect == parse_pipeline_config(root).detect
    # No [search] table: one is added; the shards named already (a gallery sharded locally): the file is kept.
    assert parse_pipeline_config(sync.sharded_pipeline("", plan)).search.shards == plan.shards
    named = sync.sharded_pipeline(root, plan)
    assert sync.sharded_pipeline(named, plan) == named


@pytest.mark.parametrize(
    ("declaration", "pipeline", "model_config", "message"),
    [
        ("count = 1\n", "", None, "count must be a whole number from 2 to 256, the N of build-index --shards N"),
        ('count = "2"\n', "", None, "count must be a whole number"),
        ("count = 2\nshards = 2\n", "", None, "unknown key 'shards': the keys are count and partial"),
        ("count = 2\npartial = 1\n", "", None, "partial must be true or false"),
        ("count = 2\n", "[search\n", None, "pipeline.toml: not valid TOML"),
        ("count = 2\n", '[search]\nshards = ["a", "b"]\n', None, '[search] shards = ["a", "b"], but'),
        ("count = 2\n", "", 'model_config_list { config { name: "x" base_path: "/models/x" } }\n',
         "no config { } for the search servable 'latent_search_model'"),
        ("count = 2\n", "", "model_config_list { config < name: 'x' > }\n", "write messages with { } (not < >)"),
    ],
)  # fmt: skip
def test_a_bad_declaration_is_one_line_naming_the_file_and_the_fix(
    sync: ModuleType, tmp_path: Path, declaration: str, pipeline: str, model_config: str | None, message: str
) -> None:
    (tmp_path / sync.SHARDS_DECLARATION).parent.mkdir(parents=True)
    (tmp_path / sync.SHARDS_DECLARATION).write_text(declaration)
    (tmp_path / "pipeline.toml").write_text(pipeline)
    (tmp_path / "serving_models.config").write_text(model_config or (REPO / "serving_models.config").read_text())
    with pytest.raises(SystemExit) as raised:
        sync.shard_files(tmp_path)
    [line] = str(raised.value).splitlines()
    assert message in line
