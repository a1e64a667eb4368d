"""Docs that cannot rot: every shell block marked runnable runs as written against a live gateway, and every link
of the README and docs/ points at a file of this repository.

A runnable block is fenced as ```` ```sh runnable ````. Its lines run in order in one bash, in a scratch folder
that holds the photos the docs use (``face.jpg``, ``group.jpg``, and ``team/`` with both), with ``make`` run in this
repository and the CLI pointed at the live gateway's own copy of the models, so what one block builds (a new
gallery version, a label) the next one sees, as a reader's would. Every ``curl`` must answer 2xx, unless its
line ends with a comment naming the status it shows, e.g. ``# 404``. Without curl those blocks skip, unless
GATEWAY_REQUIRE_CURL=1 (as ``.ci/run`` sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.support import harness, programs
from tests.support.gateway import demo_serving_dir

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PORT_IN_DOCS = "127.0.0.1:8000"
BLOCK = re.compile(r"^```sh runnable[^\n]*\n(.*?)^```", re.M | re.S)
EXPECTED = re.compile(r"#\s*(\d{3})\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def runnable_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def _commands(block: str) -> list[str]:
    """The block's commands, a backslash-continued command joined into one line."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _expected_statuses(block: str) -> list[str]:
    expected = []
    for command in _commands(block):
        if re.match(r"^\s*curl\b", command):
            found = EXPECTED.search(command)
            expected.append(found.group(1) if found else "2xx")
    return expected


# The wrapper every block runs under: curl reports each status on stderr, make runs in the repository.
PRELUDE = r"""
set -euo pipefail
curl() { command curl --silent --show-error --write-out '%{stderr}HTTP_STATUS %{http_code}\n' "$@"; }
make() {
  local args=()
  for arg in "$@"; do
    case "$arg" in DIR=*) args+=("DIR=$(realpath "${arg#DIR=}")") ;; *) args+=("$arg") ;; esac
  done
  command make --no-print-directory -C "$REPO" "${args[@]}"
}
"""


@pytest.fixture(scope="module")
def curl() -> str:
    return programs.require("curl", "CURL", package="curl")


@pytest.fixture(scope="module")
def live(curl, tmp_path_factory, demo_root):  # curl first: missing, it skips (or fails) before any model export
    """The gateway as `make run` starts it, over a private copy of the demo models, and a reader's scratch folder."""
    root = tmp_path_factory.mktemp("docs-gateway")
    config = demo_serving_dir(root, demo_root)
    scratch = tmp_path_factory.mktemp("reader")
    Image.fromarray(data.astronaut()).save(scratch / "face.jpg", quality=92)
    faces = [data.astronaut()[30:230, 130:330]]
    group = np.concatenate([np.asarray(Image.fromarray(face).resize((300, 300))) for face in faces * 3], axis=1)
    Image.fromarray(group).save(scratch / "group.jpg", quality=92)
    (scratch / "team").mkdir()
    shutil.copy(scratch / "face.jpg", scratch / "team" / "astronaut.jpg")
    shutil.copy(scratch / "group.jpg", scratch / "team" / "crew.jpg")
    Image.open(scratch / "group.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(scratch / "team" / "crew2.jpg")
    env = {"GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_POLL_INTERVAL": "1", "GATEWAY_WARMUP": "0"}
    with harness.gunicorn("docs", "app:create_app()", env, root) as server:
        yield server, scratch, env


def _run_doc(path: Path, live) -> None:
    server, scratch, env = live
    blocks = runnable_blocks(path)
    for number, block in enumerate(blocks, 1):
        script = PRELUDE + block.replace(PORT_IN_DOCS, f"127.0.0.1:{server.port}")
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=scratch,
            env={**os.environ, **env, "REPO": str(REPO), "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=600,
        )
        where = f"{path.relative_to(REPO)}, runnable block {number}:\n{block}\n--- stdout\n{result.stdout[-3000:]}"
        where += f"\n--- stderr\n{result.stderr[-3000:]}"
        assert result.returncode == 0, where
        statuses = re.findall(r"^HTTP_STATUS (\d{3})$", result.stderr, re.M)
        expected = _expected_statuses(block)
        assert len(statuses) == len(expected), where
        for got, wanted in zip(statuses, expected, strict=True):
            assert got.startswith("2") if wanted == "2xx" else got == wanted, f"{got} != {wanted}: {where}"


RUNNABLE = [path for path in DOCS if runnable_blocks(path)]


@pytest.mark.long(minutes=2)
@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_runnable_blocks_run_as_written(path, live):
    _run_doc(path, live)


def test_the_readme_and_the_tour_are_runnable():
    assert REPO / "README.md" in RUNNABLE
    assert len(RUNNABLE) >= 4


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_bytes()) <= 16 * 1024


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(path):
    """Relative links resolve to files of this repository; nothing points at a developer's own notes."""
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (path.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{path.name}: {target} leaves the repository"
        assert resolved.exists(), f"{path.name}: {target} does not exist"


def test_nothing_in_the_repository_points_at_the_shared_notes():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".png", ".jpg", ".json", ".pb") or not path.is_file() or name == "tests/system/test_docs.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "../shared" in text or "shared/DESIGN.md" in text or "shared/STYLE.md" in text:
            offenders.append(name)
    assert not offenders


def test_every_setting_is_documented():
    """docs/configuration.md names every GATEWAY_* variable the code reads, so the table cannot fall behind."""

    from app.config import Settings

    guide = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    names = set(Settings.variables().values())
    for source in (REPO / "gunicorn.conf.py", *(REPO / "app").rglob("*.py")):
        names |= set(re.findall(r"\"(GATEWAY_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    names.discard("GATEWAY_SETTINGS")  # the app's own config key, not a variable
    assert sorted(name for name in names if f"`{name}`" not in guide) == []


def test_the_api_page_names_every_documented_operation():
    """docs/api.md lists every path of the OpenAPI document outside the model surfaces (rest-api.md has those)."""
    from app import create_app
    from app.views import openapi

    guide = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    app = create_app({"rate_limit": ""})
    try:
        surfaces = ("/v1/", "/v2", "/seldon/", "/api/v1.0/")  # the model surfaces: docs/rest-api.md has those
        paths = [path for path in openapi.document(app)["paths"] if not path.startswith(surfaces)]
    finally:
        app.extensions["serving"].close()
    assert [path for path in paths if path not in guide] == []
