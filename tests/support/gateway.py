"""Serving folders and gateway settings the tests build: a config beside a private copy of the servables.

Fixtures in tests/conftest.py use these; a test that needs another arrangement calls them itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support import servables

if TYPE_CHECKING:
    from tests.support.double import TFServingDouble

BACKEND_KINDS = ("local", "grpc")
REPO = Path(__file__).resolve().parents[2]
PIPELINE_CONFIG = REPO / "serving_models.config"
PIPELINE_FILE = REPO / "pipeline.toml"
CALL_TIMEOUT = 60.0  # seconds a model call may take in a test gateway (gateway_settings)


def make_serving_dir(root: Path, exported: Path, config: str = servables.CONFIG) -> Path:
    """A config file and a private copy of the exported models; returns the config path."""
    shutil.copytree(exported, root / "serving_models")
    config_path = root / "serving_models.config"
    config_path.write_text(config, encoding="utf-8")
    return config_path


def demo_serving_dir(root: Path, demo_root: Path) -> Path:
    """The shipped serving_models.config and pipeline.toml beside a private copy of the demo servables;
    returns the config."""
    shutil.copytree(demo_root, root / "serving_models")
    config = root / "serving_models.config"
    shutil.copy(PIPELINE_CONFIG, config)
    shutil.copy(PIPELINE_FILE, root / "pipeline.toml")
    return config


def gateway_settings(kind: str, config: Path, *, warmup: bool = True) -> tuple[dict, TFServingDouble | None]:
    """Settings of a gateway over ``config`` on the ``kind`` backend ("local", or "grpc" through a protocol double
    started here: the caller stops it), without polling or a rate limit; and that double, or None. ``warmup``:
    whether versions replay their warmup records as they load (either backend).

    A model call may take 60 s, not the default 10: a user's export has no warmup records, and its first run in a
    fresh session (seconds for a detector) takes longer still on a loaded machine. Tests of deadlines set theirs."""
    from tests.support.double import TFServingDouble

    settings = {"poll_interval": 0, "model_config": config, "rate_limit": "", "warmup": warmup, "timeout": CALL_TIMEOUT}
    double = None
    if kind == "grpc":
        double = TFServingDouble(config, poll_interval=0, warmup=warmup).start()
        settings.update(backend="grpc", serving_target=double.address)
    return settings, double


def run_benchmark(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m bench.<name>`` (its smoke mode is the caller's to ask for) and require it to succeed."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
