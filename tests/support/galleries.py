"""Helpers for tests of galleries through the gateway: descriptor files, sharded serving folders, gateways made
after a test has arranged its folder, and photos as JPEG bytes."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tests.support.gateway import PIPELINE_FILE, gateway_settings

if TYPE_CHECKING:
    from flask import Flask

SEARCH = "latent_search_model"


def descriptor_file(path: Path, demo_faces, extra: int = 500, *, seed: int = 1, prefix: str = "stranger") -> Path:
    """``path``, a descriptor file of the demo faces (a gallery record, or None) under new names among ``extra``
    random unit vectors (strangers); ``extra`` strangers alone when ``demo_faces`` is None."""
    strangers = np.random.default_rng(seed).standard_normal((extra, 128)).astype(np.float32)
    strangers /= np.linalg.norm(strangers, axis=1, keepdims=True)
    names = [f"{prefix}/{i}" for i in range(extra)]
    descriptors = strangers
    if demo_faces is not None:
        faces, _ = demo_faces
        names = [f"people/{name.replace('#', '-face')}" for name in faces.names] + names
        descriptors = np.concatenate([faces.descriptors, strangers])
    np.savez(path, descriptors=descriptors, names=np.array(names))
    return path


def sharded_serving(serving_dir: Path, shards: int, *, partial: bool | None = None) -> None:
    """serving_models.config and pipeline.toml naming the gallery's shards (and ``partial``, unless None)."""
    config = serving_dir.read_text(encoding="utf-8").rstrip().removesuffix("}")
    for index in range(shards):
        name = f"{SEARCH}_{index}"
        config += f'  config {{ name: "{name}" base_path: "/models/{name}" model_platform: "tensorflow" }}\n'
    serving_dir.write_text(config + "}\n", encoding="utf-8")
    names = ", ".join(f'"{SEARCH}_{index}"' for index in range(shards))
    search = f"[search]\nshards = [{names}]"
    if partial is not None:
        search += f"\npartial = {'true' if partial else 'false'}"
    pipeline = PIPELINE_FILE.read_text(encoding="utf-8").replace("[search]", search, 1)
    (serving_dir.parent / "pipeline.toml").write_text(pipeline, encoding="utf-8")


def jpeg_bytes(path: Path) -> bytes:
    """The photo at ``path`` as JPEG bytes (quality 95)."""
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@contextlib.contextmanager
def gateways(kind: str, serving_dir: Path) -> Iterator[Callable[[], Flask]]:
    """A factory of gateways over ``serving_dir`` on backend ``kind``, made when a test has arranged the folder;
    every one made is closed (and its double) at the end."""
    from app import create_app

    made = []

    def make() -> Flask:
        # With warmup, as TF Serving runs: a model's first run in a fresh session (seconds for the detector, more on
        # a loaded machine) is paid at load, not inside a request's 10 s deadline.
        settings, double = gateway_settings(kind, serving_dir)
        app = create_app(settings)
        app.double = double
        made.append(app)
        return app

    try:
        yield make
    finally:
        for app in made:
            app.extensions["serving"].close()
            if app.double is not None:
                app.double.close()
