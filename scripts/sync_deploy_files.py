"""Copies the files Kubernetes' ConfigMaps are made from into the kustomizations, from their one source of truth.

`make run` and docker-compose read serving_models.config and pipeline.toml at the repository's root, and
docker-compose mounts deploy/ (healthcheck.sh, the batching and monitoring flag files, prepare-models.sh). Kustomize
reads only files inside the folder it builds, and refuses a symbolic link that leads out of it as it refuses the
path itself, so each kustomization carries copies, written here and never edited by hand:

    deploy/k8s/base/files/     the files above, byte for byte
    deploy/kserve/files/       serving_models.config with base paths under /mnt/models/ (where KServe's and
    deploy/seldon/files/       Seldon's storage initializers put a model), and pipeline.toml
    deploy/k8s/components/search-shards/generated/
                               the sharded gallery: one TF Serving Deployment, headless Service and disruption
                               budget per shard, each with a serving_models.config of its one servable; the gateway's
                               targets, config and pipeline file naming the shards; from the component's shards.toml
                               (how many shards), pipeline.toml and serving_models.config

A copy that differs from what this script writes fails tests/system/test_deploy_files.py, which names the fix:

    .venv/bin/python scripts/sync_deploy_files.py          # (make deploy-files) rewrite the copies
    .venv/bin/python scripts/sync_deploy_files.py --check  # exit 1, naming each copy that drifted
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
BASE_FILES = Path("deploy/k8s/base/files")
SHARDS = Path("deploy/k8s/components/search-shards")
SHARDS_DECLARATION = SHARDS / "shards.toml"  # the sharded gallery's one hand-written input: how many shards
SHARDS_GENERATED = SHARDS / "generated"
# Nothing else lives there: a file this script does not write is removed.
COPY_FOLDERS = (BASE_FILES, Path("deploy/kserve/files"), Path("deploy/seldon/files"), SHARDS_GENERATED)
# Where the servables live in each place: TF Serving's container in compose and the base (/models/), and the
# model volume KServe and Seldon mount into their predictor (/mnt/models/).
MODELS_PREFIX = 'base_path: "/models/'
MOUNTED_MODELS_PREFIX = 'base_path: "/mnt/models/'


def _same(text: str) -> str:
    return text


def under_mnt_models(text: str) -> str:
    """serving_models.config for a predictor whose storage initializer writes to /mnt/models."""
    if MODELS_PREFIX not in text:
        raise SystemExit(f'serving_models.config has no {MODELS_PREFIX}…" base path to move under /mnt/models')
    return text.replace(MODELS_PREFIX, MOUNTED_MODELS_PREFIX)


def copies(repo: Path = REPO) -> dict[Path, tuple[Path, Callable[[str], str]]]:
    """Every copy (relative to ``repo``) with its source and how it is derived from it."""
    table: dict[Path, tuple[Path, Callable[[str], str]]] = {}
    for name in ("serving_models.config", "pipeline.toml"):
        table[BASE_FILES / name] = (Path(name), _same)
    for name in ("healthcheck.sh", "batching_parameters.txt", "monitoring.config", "prepare-models.sh"):
        table[BASE_FILES / name] = (Path("deploy") / name, _same)
    for pbtxt in sorted((repo / "deploy" / "batching").glob("*.pbtxt")):
        table[BASE_FILES / "batching" / pbtxt.name] = (pbtxt.relative_to(repo), _same)
    for platform in ("kserve", "seldon"):
        table[Path("deploy") / platform / "files" / "serving_models.config"] = (
            Path("serving_models.config"),
            under_mnt_models,
        )
        table[Path("deploy") / platform / "files" / "pipeline.toml"] = (Path("pipeline.toml"), _same)
    return table


# -- the sharded gallery (deploy/k8s/components/search-shards) ------------------------------------------------------
#
# Kustomize has no loops, so what changes with the shard count is written here, into the component's generated/
# folder: per shard a Deployment, a headless Service, a disruption budget and a ConfigMap with a serving_models.config
# of its one servable; the gateway's GATEWAY_SERVABLE_TARGETS; the main TF Serving's probes; and the base's
# serving-config replaced by the sharded files. What every shard's pod has in common is hand-written beside it
# (shard-pod.yaml), and tests/system/test_k8s_search_shards.py renders the whole and checks the mapping.

SHARD_APP = "tf-serving-shard"  # the shard pods' app name; tf-serving-shard-<i> names each shard's objects
SERVABLE_ANNOTATION = "portrait-gateway/servable"  # on each shard's pods: the one servable they serve
GRPC_PORT = 8500  # TF Serving's gRPC port, as every TF Serving here is started (--port=8500)
MAX_SHARDS = 256  # build-index --shards takes 1 to 256; a sharded pipeline needs 2 at least
# The stages and their servables where pipeline.toml names none: app/pipeline_config.py's defaults (the tests hold
# the two equal; this script imports nothing of the gateway's, so that it runs as `python scripts/…` anywhere).
DEFAULT_SERVABLES = {
    "detect": "face_detection",
    "encode": "twingan_latent_encoder",
    "search": "latent_search_model",
    "translate": "ugatit_selfie2anime",
}
GENERATED_HEADER = (
    "# Written by scripts/sync_deploy_files.py (make deploy-files) from the component's shards.toml and the\n"
    "# repository's pipeline.toml and serving_models.config: edit those, never this file.\n"
)


class ShardPlan(NamedTuple):
    """The sharded gallery as the component deploys it."""

    search: str  # the search servable that names the gallery
    shards: tuple[str, ...]  # its shard servables, in order
    partial: bool

    def object_name(self, index: int) -> str:
        """The Deployment, Service, budget and ConfigMap of shard ``index`` (servable names need not be DNS names)."""
        return f"{SHARD_APP}-{index}"


def _toml(text: str, source: object) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"{source}: not valid TOML: {exc}") from None


def read_shards_declaration(text: str) -> tuple[int, bool]:
    """shards.toml's (count, partial); a bad value is a one-line error naming the file, the key and the fix."""
    table = _toml(text, SHARDS_DECLARATION)
    unknown = sorted(set(table) - {"count", "partial"})
    if unknown:
        raise SystemExit(f"{SHARDS_DECLARATION}: unknown key {unknown[0]!r}: the keys are count and partial")
    count, partial = table.get("count"), table.get("partial", False)
    if type(count) is not int or not 2 <= count <= MAX_SHARDS:
        raise SystemExit(
            f"{SHARDS_DECLARATION}: count must be a whole number from 2 to {MAX_SHARDS}, the N of "
            f"build-index --shards N, not {count!r}"
        )
    if type(partial) is not bool:
        raise SystemExit(f"{SHARDS_DECLARATION}: partial must be true or false, not {partial!r}")
    return count, partial


def shard_plan(pipeline_text: str, declaration_text: str) -> ShardPlan:
    count, partial = read_shards_declaration(declaration_text)
    search = _toml(pipeline_text, "pipeline.toml").get("search", {}).get("servable", DEFAULT_SERVABLES["search"])
    # build-index --shards N names them so (app/gallery/build.py, gallery_servables; the tests hold the two equal).
    return ShardPlan(search, tuple(f"{search}_{index}" for index in range(count)), partial)


_SEARCH_TABLE = re.compile(r"^[ \t]*\[[ \t]*search[ \t]*\][^\n]*\n?", re.M)


def sharded_pipeline(text: str, plan: ShardPlan) -> str:
    """pipeline.toml with its [search] stage naming the shards (and partial), everything else as it is.

    A key pipeline.toml already sets must agree with shards.toml: two values for one setting would be two truths.
    """
    search = _toml(text, "pipeline.toml").get("search", {})
    wanted = {"shards": list(plan.shards), "partial": plan.partial}
    added = []
    for key, value in wanted.items():
        if key not in search:
            added.append(f"{key} = {json.dumps(value)}\n")
        elif search[key] != value:
            raise SystemExit(
                f"pipeline.toml: [search] {key} = {json.dumps(search[key])}, but {SHARDS_DECLARATION} makes it "
                f"{json.dumps(value)}: change one of them so that they agree"
            )
    if not added:
        return text
    lines = (
        f"# {SHARDS}: the gallery is split over these servables, each on its own TF Serving\n"
        f"# (written by scripts/sync_deploy_files.py from {SHARDS_DECLARATION})\n" + "".join(added)
    )
    header = _SEARCH_TABLE.search(text)
    if header is None:
        result = text + ("" if text.endswith("\n") or not text else "\n") + "\n[search]\n" + lines
    else:
        at = header.end()
        result = text[:at] + ("" if text[:at].endswith("\n") else "\n") + lines + text[at:]
    got = _toml(result, "pipeline.toml with the shards added").get("search", {})
    if any(got.get(key) != value for key, value in wanted.items()):  # e.g. a [search] written as dotted keys
        raise SystemExit("pipeline.toml: could not add shards to its [search] table; add a [search] table header")
    return result


class ConfigBlock(NamedTuple):
    """One ``config { }`` of serving_models.config: its servable, where it lies in the text, and where its name
    and base path are written."""

    name: str
    start: int  # from the start of its first line
    end: int  # to the end of its last line
    name_at: tuple[int, int]  # the quoted name
    base_path_at: tuple[int, int] | None  # the quoted base path


_TOKEN = re.compile(
    r"""(?P<space>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')"""
    r"""|(?P<word>[A-Za-z0-9_.+-]+)|(?P<punct>[{}:<>\[\],;])"""
)


def config_blocks(text: str) -> list[ConfigBlock]:
    """The ``config { }`` blocks of a ModelServerConfig's model_config_list, read as protobuf text format is
    (strings and # comments skipped). Only what this script needs is understood; anything else is refused."""
    blocks: list[ConfigBlock] = []
    recent: list[tuple[str, int]] = [("", 0), ("", 0)]  # the last two tokens that are not space or comment
    opened: list[tuple[str, int]] = []  # each open brace's field, and where that field's name starts
    fields: dict[str, tuple[int, int]] = {}
    position = 0
    while position < len(text):
        token = _TOKEN.match(text, position)
        if token is None or token.lastgroup is None:
            raise SystemExit(f"serving_models.config: cannot read it at character {position}: check its syntax")
        kind, value = token.lastgroup, token.group()
        if kind == "punct" and value in "<>":
            raise SystemExit("serving_models.config: write messages with { } (not < >) for this script to read it")
        if kind == "punct" and value == "{":
            field, at = recent[0] if recent[1][0] == ":" else recent[1]  # `config {` or `config: {`
            opened.append((field, at))
            if len(opened) == 2 and opened[0][0] == "model_config_list" and field == "config":
                fields = {}
        elif kind == "punct" and value == "}":
            if not opened:
                raise SystemExit("serving_models.config: a } closes nothing")
            field, at = opened.pop()
            if len(opened) == 1 and opened[0][0] == "model_config_list" and field == "config":
                if "name" not in fields:
                    raise SystemExit("serving_models.config: a config { } has no name")
                name = text[fields["name"][0] + 1 : fields["name"][1] - 1]
                start, end = _whole_lines(text, at, token.end())
                blocks.append(ConfigBlock(name, start, end, fields["name"], fields.get("base_path")))
        elif kind == "string" and len(opened) == 2 and opened[1][0] == "config" and recent[1][0] == ":":
            key = recent[0][0]
            if key in ("name", "base_path"):
                if "\\" in value:
                    raise SystemExit(f"serving_models.config: write {key} without escapes: {value}")
                fields[key] = (token.start(), token.end())
        if kind not in ("space", "comment"):
            recent = [recent[1], (value, token.start())]
        position = token.end()
    if opened:
        raise SystemExit("serving_models.config: a { is never closed")
    return blocks


def _whole_lines(text: str, start: int, end: int) -> tuple[int, int]:
    """``start:end`` widened to whole lines where nothing else shares them (a comment after it goes with it)."""
    line_start = text.rfind("\n", 0, start) + 1
    if not text[line_start:start].strip():
        start = line_start
    line_end = text.find("\n", end)
    line_end = len(text) if line_end < 0 else line_end + 1
    rest = text[end:line_end].strip()
    if not rest or rest.startswith("#"):
        end = line_end
    return start, end


def _renamed(text: str, block: ConfigBlock, servable: str) -> str:
    """The text of ``block`` serving ``servable`` instead: its name, and its base path's last folder."""
    pieces = [(block.name_at, json.dumps(servable))]
    if block.base_path_at is not None:
        old = text[block.base_path_at[0] + 1 : block.base_path_at[1] - 1]
        folder = old.rstrip("/").rpartition("/")[0]
        pieces.append((block.base_path_at, json.dumps(f"{folder}/{servable}" if folder else servable)))
    out, position = [], block.start
    for (start, end), replacement in sorted(pieces):
        out += [text[position:start], replacement]
        position = end
    out.append(text[position : block.end])
    return "".join(out)


def sharded_model_configs(text: str, plan: ShardPlan) -> tuple[str, str, dict[str, str]]:
    """From serving_models.config: the main TF Serving's (without the gallery), the gateway's (every servable of
    the cluster: the main one's and the shards') and each shard's own (its one servable).

    A shard that serving_models.config lists already (a gallery sharded locally) keeps its own config { }; any
    other is the search servable's, version policy and labels included, renamed (all shards share versions).
    """
    blocks = {block.name: block for block in config_blocks(text)}
    gallery = [blocks[name] for name in (plan.search, *plan.shards) if name in blocks]
    if not gallery:
        raise SystemExit(
            f"serving_models.config: no config {{ }} for the search servable {plan.search!r}, whose version policy "
            "the shards take: add it"
        )
    own = {}
    for shard in plan.shards:
        if shard in blocks:
            block = text[blocks[shard].start : blocks[shard].end]
        elif plan.search in blocks:
            block = _renamed(text, blocks[plan.search], shard)
        else:
            raise SystemExit(f"serving_models.config: no config {{ }} for the shard {shard!r} nor for {plan.search!r}")
        own[shard] = block if block.endswith("\n") else block + "\n"
    # The gallery's blocks go; the shards take the place of the first of them.
    first = min(block.start for block in gallery)
    main, everything, position = [], [], 0
    for block in sorted(gallery, key=lambda block: block.start):
        main.append(text[position : block.start])
        everything.append(text[position : block.start])
        if block.start == first:
            everything += list(own.values())
        position = block.end
    main.append(text[position:])
    everything.append(text[position:])
    alone = {shard: "model_config_list {\n" + block + "}\n" for shard, block in own.items()}
    return "".join(main), "".join(everything), alone


def pipeline_servables(pipeline_text: str) -> dict[str, str]:
    """Each stage's servable, as pipeline.toml names it or by default."""
    tables = _toml(pipeline_text, "pipeline.toml")
    return {stage: tables.get(stage, {}).get("servable", default) for stage, default in DEFAULT_SERVABLES.items()}


def _probe(servables: list[str] | tuple[str, ...], indent: str) -> str:
    """An exec probe's command asking deploy/healthcheck.sh for ``servables``, as YAML at ``indent`` (each name a
    JSON string, which YAML reads as a string whatever it spells: 1, true, null)."""
    items = ("bash", "/config/healthcheck.sh", *(json.dumps(servable) for servable in servables))
    return "".join(f"{indent}  - {item}\n" for item in items)


def _shard_objects(plan: ShardPlan, index: int) -> str:
    name, servable = plan.object_name(index), plan.shards[index]
    labels = (
        f"app.kubernetes.io/name: {SHARD_APP}\n"
        f"app.kubernetes.io/instance: {name}\n"
        "app.kubernetes.io/component: model-server\n"
    )

    def at(indent: int) -> str:
        return textwrap.indent(labels, " " * indent)

    probe = _probe([servable], " " * 14)
    return f"""\
# {servable}: shard {index + 1} of {len(plan.shards)}, on a TF Serving of its own that serves nothing else (its
# ConfigMap {name} lists this one servable). The pod is ../shard-pod.yaml's; here is only what is this shard's.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  labels:
{at(4)}spec:
  selector:
    matchLabels:
      app.kubernetes.io/name: {SHARD_APP}
      app.kubernetes.io/instance: {name}
  template:
    metadata:
      labels:
{at(8)}      annotations:
        # The servable these pods serve (the pull-models component pulls only it).
        {SERVABLE_ANNOTATION}: {json.dumps(servable)}
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              app.kubernetes.io/instance: {name}
      containers:
        - name: tf-serving
          # Ready when {servable} has a version AVAILABLE.
          startupProbe:
            exec:
              command:
{probe}          readinessProbe:
            exec:
              command:
{probe}      volumes:
        - name: serving-config
          configMap:
            name: {name}
---
# Headless, as the base's tf-serving: the gateway's dns:/// target finds every ready pod of this shard and
# spreads its calls over them (round robin).
apiVersion: v1
kind: Service
metadata:
  name: {name}
  labels:
{at(4)}spec:
  clusterIP: None
  selector:
    app.kubernetes.io/name: {SHARD_APP}
    app.kubernetes.io/instance: {name}
  ports:
    - name: grpc
      port: {GRPC_PORT}
      targetPort: grpc
    - name: http
      port: 8501
      targetPort: http
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {name}
  labels:
{at(4)}spec:
  maxUnavailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: {SHARD_APP}
      app.kubernetes.io/instance: {name}
"""


def _servable_targets(plan: ShardPlan) -> str:
    """GATEWAY_SERVABLE_TARGETS: each shard to its Service, every ready pod of it (dns:///, round robin)."""
    return ";".join(
        f"{shard}=dns:///{plan.object_name(index)}.NAMESPACE.svc.cluster.local:{GRPC_PORT}"
        for index, shard in enumerate(plan.shards)
    )


def _without_leading_comments(text: str) -> str:
    """serving_models.config without its own opening comment, which speaks of where the original is read."""
    lines = text.splitlines(keepends=True)
    while lines and lines[0].lstrip().startswith("#"):
        lines.pop(0)
    return "".join(lines)


def shard_files(repo: Path = REPO) -> dict[Path, str]:
    """Everything the component's generated/ folder holds, by path relative to ``repo``."""
    pipeline_text = (repo / "pipeline.toml").read_text(encoding="utf-8")
    model_text = _without_leading_comments((repo / "serving_models.config").read_text(encoding="utf-8"))
    plan = shard_plan(pipeline_text, (repo / SHARDS_DECLARATION).read_text(encoding="utf-8"))
    main_config, all_config, shard_configs = sharded_model_configs(model_text, plan)
    files = {
        "files/pipeline.toml": sharded_pipeline(pipeline_text, plan),
        "files/serving_models.config": GENERATED_HEADER
        + f"# The main TF Serving's servables: serving_models.config's, less the gallery ({plan.search}),\n"
        "# whose shards have TF Servings of their own.\n" + main_config,
        "files/all_servables.config": GENERATED_HEADER
        + "# Every servable of the cluster, as the gateway sees it (GATEWAY_MODEL_CONFIG): the main TF Serving's\n"
        "# and each shard.\n" + all_config,
    }
    for shard, text in shard_configs.items():
        files[f"files/{shard}.config"] = GENERATED_HEADER + f"# The TF Serving of {shard}: this one servable.\n" + text

    stages = pipeline_servables(pipeline_text)
    main_servables = [servable for stage, servable in stages.items() if stage != "search"]
    files["tf-serving.yaml"] = GENERATED_HEADER + (
        "# The main TF Serving no longer serves the gallery: ready when every other servable of the pipeline is.\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tf-serving\nspec:\n  template:\n    spec:\n"
        "      containers:\n        - name: tf-serving\n"
        "          startupProbe:\n            exec:\n              command:\n"
        + _probe(main_servables, " " * 14)
        + "          readinessProbe:\n            exec:\n              command:\n"
        + _probe(main_servables, " " * 14)
    )
    targets = _servable_targets(plan)
    files["gateway.yaml"] = GENERATED_HEADER + (
        "# The gateway calls each shard on its own TF Serving (every ready pod of the shard's headless Service,\n"
        "# round robin) and every other servable on tf-serving, as before; NAMESPACE is filled in by the\n"
        "# replacements of kustomization.yaml. It reads the sharded pipeline file where the base's was, and the\n"
        "# list of every servable of the cluster (version labels, /v2's model index).\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: gateway\nspec:\n  template:\n    spec:\n"
        "      containers:\n        - name: gateway\n          env:\n"
        f"            - name: GATEWAY_SERVABLE_TARGETS\n              value: {json.dumps(targets)}\n"
        "            - name: GATEWAY_MODEL_CONFIG\n              value: /etc/portrait/all_servables.config\n"
    )
    files["shards.yaml"] = GENERATED_HEADER + "---\n".join(
        _shard_objects(plan, index) for index in range(len(plan.shards))
    )
    files["kustomization.yaml"] = _shard_kustomization(plan, targets)
    return {SHARDS_GENERATED / path: text for path, text in files.items()}


def _shard_kustomization(plan: ShardPlan, targets: str) -> str:
    generators = "".join(
        f"  - name: {plan.object_name(index)}\n"
        "    options:\n      labels:\n"
        f"        app.kubernetes.io/name: {SHARD_APP}\n"
        "    files:\n"
        f"      - serving_models.config=files/{shard}.config\n"
        for index, shard in enumerate(plan.shards)
    )
    # The base's way (base/kustomization.yaml): the namespace, declared once, into each address that holds it.
    segments = targets.split(".")
    indexes = [index for index, segment in enumerate(segments) if segment == "NAMESPACE"]
    replacement_targets = "".join(
        "      - select:\n          kind: Deployment\n          name: gateway\n        fieldPaths:\n"
        "          - spec.template.spec.containers.[name=gateway].env.[name=GATEWAY_SERVABLE_TARGETS].value\n"
        f'        options:\n          delimiter: "."\n          index: {index}\n'
        for index in indexes
    )
    return (
        GENERATED_HEADER
        + f"# The part of {SHARDS} that changes with the shard count; ../kustomization.yaml includes it.\n"
        "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n\nresources:\n  - shards.yaml\n\n"
        "configMapGenerator:\n"
        "  # The base's serving-config, sharded: the main TF Serving's servables (serving_models.config), every\n"
        "  # servable of the cluster for the gateway (all_servables.config), and the pipeline file naming the shards.\n"
        "  - name: serving-config\n    behavior: replace\n    files:\n"
        "      - files/serving_models.config\n      - files/all_servables.config\n      - files/pipeline.toml\n"
        "  # Each shard's TF Serving: a serving_models.config of its one servable.\n"
        + generators
        + "\npatches:\n  - path: gateway.yaml\n  - path: tf-serving.yaml\n\nreplacements:\n"
        "  - source:\n      kind: Service\n      name: tf-serving\n      fieldPath: metadata.namespace\n"
        "    targets:\n" + replacement_targets
    )


def expected(repo: Path = REPO) -> dict[Path, str]:
    """Every file this script writes (relative to ``repo``) with its text: the copies, and the sharded gallery's."""
    made = {copy: derive((repo / src).read_text(encoding="utf-8")) for copy, (src, derive) in copies(repo).items()}
    return made | shard_files(repo)


def drifted(repo: Path = REPO) -> list[Path]:
    """The copies that are missing or differ from what this script would write; and stray files among them."""
    wanted = expected(repo)
    wrong = [p for p, text in wanted.items() if not (repo / p).is_file() or (repo / p).read_text("utf-8") != text]
    strays = [
        p.relative_to(repo)
        for folder in COPY_FOLDERS
        for p in sorted((repo / folder).rglob("*"))
        if p.is_file() and p.relative_to(repo) not in wanted
    ]
    return sorted(wrong + strays)


def write(repo: Path = REPO) -> list[Path]:
    """Rewrite every copy that differs (each through a temporary sibling and a rename) and remove the copies whose
    source is gone; returns the paths changed."""
    written = []
    wanted = expected(repo)
    for stray in [p for p in drifted(repo) if p not in wanted]:
        (repo / stray).unlink()
        written.append(stray)
    for path, text in wanted.items():
        target = repo / path
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.tmp")
        scratch.write_text(text, encoding="utf-8")
        scratch.replace(target)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a copy drifted")
    args = parser.parse_args(argv)
    if args.check:
        wrong = drifted()
        for path in wrong:
            print(f"{path}: differs from its source; run: python scripts/sync_deploy_files.py", file=sys.stderr)
        return 1 if wrong else 0
    for path in write():
        print(f"{'wrote' if (REPO / path).exists() else 'removed'} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
