"""What the gateway rollout tests share: a demo serving folder with extra versions and labels, apps over it on either
backend, pipeline files changed under a running gateway, metric samples, client addresses and their requests."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from app import create_app
from app.modelzoo.search import export_search_model
from app.pipeline_config import parse_pipeline_config
from app.web.extensions import serving
from tests.support.double import TFServingDouble
from tests.support.gateway import PIPELINE_FILE, demo_serving_dir
from tests.support.harness import server_timing_entries
from tests.support.waiting import wait_for

POLL = 0.2  # seconds between the servers' looks at the disk and config, and the gateway's at the pipeline file


def jpeg(pixels: np.ndarray, side: int | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if side is not None:
        image = image.resize((side, side))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


ASTRONAUT = jpeg(data.astronaut())


def address(n: int) -> dict[str, dict[str, str]]:
    """The test client's keyword for a request from client number ``n`` (one address each)."""
    return {"environ_base": {"REMOTE_ADDR": f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"}}


def with_rollout(**stages: str) -> str:
    """The shipped pipeline.toml with ``lines`` added to the tables of the stages named."""
    text = PIPELINE_FILE.read_text(encoding="utf-8")
    for stage, lines in stages.items():
        header = f"[{stage}]"
        start = text.index(header)
        end = text.index("\n", start) + 1
        text = text[:end] + lines.strip() + "\n" + text[end:]
    return text


@contextmanager
def gateway(kind: str, config: Path, **settings: Any) -> Iterator[Flask]:
    """The gateway over ``config`` on the local backend or via gRPC to the protocol double, both polling."""
    options = {"poll_interval": POLL, "model_config": config, "rate_limit": "", **settings}
    double = None
    if kind == "grpc":
        double = TFServingDouble(config, poll_interval=POLL, allow_labels_for_unavailable=True).start()
        options.update(backend="grpc", serving_target=double.address)
    app = create_app(options)
    app.config["TESTING"] = True
    app.double = double
    try:
        yield app
    finally:
        serving(app).close()
        if double is not None:
            double.close()


def use_pipeline(app: Flask, text: str, timeout: float = 10.0) -> None:
    """Write the pipeline file the running gateway reads and wait until it is in force."""
    path = serving(app).pipeline_file.path
    path.write_text(text, encoding="utf-8")
    wanted = parse_pipeline_config(text).model_dump()

    def look() -> tuple[dict, str | None]:
        serving(app).pipeline  # noqa: B018  (a request's look at the file)
        return serving(app).pipeline_config.model_dump(), serving(app).pipeline_file.refused

    wait_for(look, timeout, "the new pipeline file in force (config, refusal)", until=lambda seen: seen[0] == wanted)


def refusal(app: Flask) -> str | None:
    """Why the running gateway refused its pipeline file, after a request's look at it (None: not refused)."""
    serving(app).pipeline  # noqa: B018
    return serving(app).pipeline_file.refused


def metric(app: Flask, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when there is none)."""
    text = app.test_client().get("/metrics").get_data(as_text=True)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                total += sample.value
    return total


def copy_version(models: Path, servable: str, source: str | int, version: int, source_servable: str = "") -> Path:
    target = models / servable / str(version)
    shutil.copytree(models / (source_servable or servable) / str(source), target)
    return target


def model_config_text(blocks: Mapping[str, str]) -> str:
    """serving_models.config with the given extra lines in the blocks of the servables named."""
    lines = ["model_config_list {"]
    for name in ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime"):
        extra = "".join(f"    {line.strip()}\n" for line in blocks.get(name, "").strip().splitlines())
        lines.append(
            f'  config {{\n    name: "{name}"\n    base_path: "/models/{name}"\n    model_platform: "tensorflow"\n'
            f"{extra}  }}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


SMALL_PHOTO = jpeg(data.astronaut(), side=96)  # detect runs in a few ms: hundreds of requests stay quick
OTHER_GALLERY = [f"elsewhere/face_{i:02d}.jpg" for i in range(30)]


def build_versions(models: Path) -> None:
    """face_detection 2 (the translator: a detector that does not fit, i.e. a canary that fails) and 3 (a copy of
    1); latent_search_model 2 (another gallery, no face in common with 1) and 3 (a copy of 1)."""
    broken = copy_version(models, "face_detection", 1, 2, source_servable="ugatit_selfie2anime")
    copy_version(models, "face_detection", 1, 3)
    for warmup in broken.glob("assets.extra/*"):
        warmup.unlink()
    rng = np.random.default_rng(15)
    latents = rng.normal(0, 0.1, (len(OTHER_GALLERY), 128)).astype(np.float32)
    export_search_model(models / "latent_search_model" / "2", latents, OTHER_GALLERY)
    copy_version(models, "latent_search_model", 1, 3)


# Labels: stable -> 1, broken -> 2, canary -> 3 for the detector, stable -> 1, canary -> 2 for the gallery.
CANARY_CONFIG = model_config_text(
    {
        "face_detection": """
            model_version_policy { all {} }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "broken" value: 2 }
            version_labels { key: "canary" value: 3 }
        """,
        "latent_search_model": """
            model_version_policy { all {} }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
        """,
    }
)


def canary_serving_dir(root: Path, demo_root: Path) -> Path:
    """The demo servables with the versions of build_versions, labelled by CANARY_CONFIG; returns the config."""
    config = demo_serving_dir(root, demo_root)
    build_versions(root / "serving_models")
    config.write_text(CANARY_CONFIG, encoding="utf-8")
    return config


def post(app: Flask, path: str, n: int, photo: bytes = ASTRONAUT, **query: str):
    response = app.test_client().post(path, query_string=query, data=photo, content_type="image/jpeg", **address(n))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response


def timing_arms(header: str) -> dict[str, str]:
    """stage -> arm from a Server-Timing header (``search;dur=4.1;desc="canary"``)."""
    return {name: params["desc"] for name, params in server_timing_entries(header).items() if "desc" in params}
