"""Hostile names: gallery faces and uploads named with markup, quotes and URL tricks, for the escaping tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from app import create_app
from tests.support.gateway import demo_serving_dir

SCRIPT = "<script>alert(1)</script>"
# Gallery file names as build-index stores them (paths relative to the folder): markup, quotes,
# percent tricks, characters that must be escaped in a URL, and non-ASCII.
HOSTILE_NAMES = (
    f"{SCRIPT}.jpg",  # a folder "<script>alert(1)<" holding "script>.jpg"
    '"><img src=x onerror=alert(1)>.png',
    "' onmouseover='alert(1)'.jpg",
    "%2e%2e%2f%252e%252e%252fetc%2fpasswd.jpg",
    "space & ampersand #1?.webp",
    "ünï/cödé.jpg",
)
UPLOAD_NAMES = (f"{SCRIPT}.jpg", '"><img src=x onerror=alert(1)>.png')


def build_hostile_gallery(root: Path, demo_root: Path) -> Path:
    """A serving folder whose newest gallery (version 2) names its faces with HOSTILE_NAMES; returns its config.

    The gallery is indexed the way an operator does it: `flask build-index --whole-image <folder>`.
    """
    config = demo_serving_dir(root, demo_root)
    folder = root / "hostile-gallery"
    rng = np.random.default_rng(7)
    for name in HOSTILE_NAMES:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="WEBP" if name.endswith(".webp") else None)
    builder = create_app({"model_config": config, "poll_interval": 0, "warmup": False})
    try:
        result = builder.test_cli_runner().invoke(args=["build-index", "--whole-image", str(folder)])
    finally:
        builder.extensions["serving"].close()
    assert result.exit_code == 0, result.output
    assert f"added {len(HOSTILE_NAMES)} faces" in result.output
    return config
