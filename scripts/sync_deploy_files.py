"""Copies the files Kubernetes' ConfigMaps are made from into the kustomizations, from their one source of truth.

`make run` and docker-compose read serving_models.config and pipeline.toml at the repository's root, and
docker-compose mounts deploy/ (healthcheck.sh, the batching and monitoring flag files, prepare-models.sh). Kustomize
reads only files inside the folder it builds, and refuses a symbolic link that leads out of it as it refuses the
path itself, so each kustomization carries copies, written here and never edited by hand:

    deploy/k8s/base/files/     the files above, byte for byte
    deploy/kserve/files/       serving_models.config with base paths under /mnt/models/ (where KServe's and
    deploy/seldon/files/       Seldon's storage initializers put a model), and pipeline.toml

A copy that differs from what this script writes fails tests/system/test_deploy_files.py, which names the fix:

    .venv/bin/python scripts/sync_deploy_files.py          # (make deploy-files) rewrite the copies
    .venv/bin/python scripts/sync_deploy_files.py --check  # exit 1, naming each copy that drifted
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE_FILES = Path("deploy/k8s/base/files")
COPY_FOLDERS = (BASE_FILES, Path("deploy/kserve/files"), Path("deploy/seldon/files"))  # nothing else lives there
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


def expected(repo: Path = REPO) -> dict[Path, str]:
    return {copy: derive((repo / src).read_text(encoding="utf-8")) for copy, (src, derive) in copies(repo).items()}


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
