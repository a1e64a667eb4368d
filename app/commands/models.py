"""`flask --app app export-models` and `build-index`: thin shells over the model zoo's pure functions."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask, current_app

from app.config import Settings
from app.modelzoo.demo import export_models
from app.pipeline_config import PipelineConfig
from app.serving.tensorflow_import import import_tensorflow


def register(app: Flask) -> None:
    """Add export-models and build-index to the app's CLI."""

    @app.cli.command("export-models")
    @click.option("--if-missing", is_flag=True, help="Keep servables that already have a version.")
    def export_models_command(if_missing: bool) -> None:
        """Write version 1 of the four demo servables and the demo gallery index into serving_models/."""
        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        import_tensorflow(settings.log_level.upper())  # its start-up noise filtered, as the gateway's is
        root = settings.servable_root()
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
                    settings.servable_root() / config.search.servable,
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
