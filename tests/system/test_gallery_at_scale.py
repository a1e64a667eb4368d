"""A gallery of 100,000 faces built from descriptors, then 20 new people added from photos and one of them erased,
checked through the gateway on both backends (the living gallery's "done when", as a reviewer would run it)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from PIL import Image

from app import create_app
from app.gallery.build import BuildRequest, build_gallery
from app.gallery.record import read_names, read_record
from app.modelzoo import weights
from app.modelzoo.demo import demo_pipeline
from app.serving.local_backend import LocalBackend
from tests.support.gateway import demo_serving_dir, gateway_settings
from tests.support.synthetic_faces import strangers

pytestmark = [pytest.mark.slow, pytest.mark.long(minutes=2)]
SEARCH = "latent_search_model"
STRANGERS = 100_000
PEOPLE = 20


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LocalBackend]:
    config = tmp_path_factory.mktemp("builder") / "models.config"
    blocks = "".join(
        f'config {{ name: "{name}" base_path: "{demo_root / name}" model_platform: "tensorflow" }} '
        for name in ("face_detection", "twingan_latent_encoder")
    )
    config.write_text(f"model_config_list {{ {blocks}}}", encoding="utf-8")
    with LocalBackend(config, poll_interval=0, warmup=False) as backend:
        yield backend


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> tuple[Path, dict[str, bytes]]:
    """Twenty people the gallery has not seen: a photo each to add (person07/photo.jpg), and another photo of each
    to look them up with (framed tighter, turned a little, smaller, recompressed)."""
    faces, _ = read_record(demo_root / SEARCH / "1")
    samples = {path.name: Image.open(path).convert("RGB") for path in weights.sample_photos()}
    folder = tmp_path_factory.mktemp("people")
    others: dict[str, bytes] = {}
    for index in range(PEOPLE):
        photo = samples[faces.sources[index].rpartition("/")[2]]
        ymin, xmin, ymax, xmax = faces.boxes[index]
        cy, cx = (ymin + ymax) / 2 * photo.height, (xmin + xmax) / 2 * photo.width
        side = max((ymax - ymin) * photo.height, (xmax - xmin) * photo.width)

        def framed(scale: float, photo=photo, cx=cx, cy=cy, side=side) -> Image.Image:
            half = scale * side / 2  # the people beside stay out of a frame this tight
            return photo.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))

        name = f"person{index:02d}/photo.jpg"
        (folder / name).parent.mkdir(parents=True)
        framed(3.0).save(folder / name, quality=92)
        changed = framed(2.6).rotate(4, resample=Image.Resampling.BILINEAR)
        changed = changed.resize((int(changed.width * 0.8), int(changed.height * 0.8)))
        buffer = io.BytesIO()
        changed.save(buffer, format="JPEG", quality=75)
        others[name] = buffer.getvalue()
    return folder, others


def _first(client, photo: bytes) -> list[str]:
    answer = client.post("/api/v1/search?k=5", data={"image_file": (io.BytesIO(photo), "q.jpg")})
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    return [match["filename"] for match in answer.json["matches"]]


@pytest.mark.parametrize("kind", ["local", "grpc"])
def test_add_twenty_people_then_erase_one(kind, builder, people, tmp_path, demo_root):
    folder, others = people
    config = demo_serving_dir(tmp_path, demo_root)
    root = config.parent / "serving_models"
    real = read_record(demo_root / SEARCH / "1")[0].descriptors
    descriptors = tmp_path / "strangers.npz"
    names = np.array([f"stranger/{i:06d}" for i in range(STRANGERS)])
    np.savez(descriptors, descriptors=strangers(real, STRANGERS, seed=11), names=names)
    build = build_gallery(BuildRequest(descriptors=descriptors), builder, demo_pipeline(), root)  # version 2
    assert build.published.faces == STRANGERS and build.published.shards[0].search["kind"] == "exact"
    added = build_gallery(BuildRequest(folder=folder, add=True), builder, demo_pipeline(), root)  # version 3
    assert added.report.photos == PEOPLE and added.added == PEOPLE  # 20 photos encoded, not 100,020
    settings, double = gateway_settings(kind, config, warmup=False)
    app: Flask = create_app(settings)
    try:
        client = app.test_client()
        for name, photo in others.items():
            assert _first(client, photo)[0] == name, name
        erased = sorted(others)[0]
        removal = build_gallery(BuildRequest(remove=[erased.replace("photo.jpg", "*")]), builder, demo_pipeline(), root)
        assert removal.removed == [erased] and removal.older_holding == {3: 1}
        assert erased not in read_names(root / SEARCH / "4") and len(read_names(root / SEARCH / "4")) == STRANGERS + 19
        runtime = double.runtime if double is not None else app.extensions["serving"].backend.inner.runtime
        runtime.poll_once()  # the new version is picked up as a poll would, without a restart
        found = _first(client, others[erased])
        assert not any(match.startswith(erased.partition("/")[0]) for match in found)  # gone from the answer
        for name, photo in others.items():
            if name != erased:
                assert _first(client, photo)[0] == name, name
    finally:
        app.extensions["serving"].close()
        if double is not None:
            double.close()
