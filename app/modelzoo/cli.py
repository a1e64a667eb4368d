"""Model zoo commands on Flask's CLI (`flask --app app ...`): export-models, build-index, check-models.

Each command is a thin shell over a pure function that tests call directly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import numpy as np
from flask import Flask, current_app
from PIL import Image

from app.config import Settings
from app.serving.base import Backend, SignatureMetadata
from app.stages import DEFAULT_STAGES, Stage

DEMO_GALLERY_PREFIX = "lfw"


def servable_root(settings: Settings) -> Path:
    """The local folder that holds <servable>/<version>/ (what /models/ maps to)."""
    return settings.models_root or settings.model_config.parent / "serving_models"


def has_version(base_path: Path) -> bool:
    return base_path.is_dir() and any(p.name.isdigit() and p.is_dir() for p in base_path.iterdir())


def write_demo_gallery(folder: Path) -> Path:
    """The demo gallery: the 100 face images of ``skimage.data.lfw_subset()`` (real LFW faces) as PNG files."""
    from skimage import data

    target = folder / DEMO_GALLERY_PREFIX
    target.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(data.lfw_subset()[:100]):
        pixels = np.clip(face * 255.0 + 0.5, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).convert("RGB").save(target / f"face_{index:03d}.png")
    return folder


def _config_text(servables: dict[str, Path]) -> str:
    blocks = "".join(
        f'  config {{ name: "{name}" base_path: "{path.resolve()}" model_platform: "tensorflow" }}\n'
        for name, path in servables.items()
    )
    return f"model_config_list {{\n{blocks}}}\n"


def index_demo_gallery(root: Path, version: int = 1) -> None:
    """Build the demo gallery index with the encoder just exported, served in-process."""
    from app.modelzoo.gallery import build_index
    from app.serving.local_backend import LocalBackend

    with tempfile.TemporaryDirectory(prefix="demo-gallery-") as scratch:
        scratch_path = Path(scratch)
        config = scratch_path / "encoder.config"
        encoder = DEFAULT_STAGES["encode"].servable
        config.write_text(_config_text({encoder: root / encoder}), encoding="utf-8")
        gallery = write_demo_gallery(scratch_path / "gallery")
        with LocalBackend(config, poll_interval=0) as backend:
            build_index(
                gallery,
                backend,
                root / DEFAULT_STAGES["search"].servable,
                whole_image=True,
                version=version,
            )


def export_models(root: Path, *, if_missing: bool = False, echo: Callable[[str], None] = print) -> list[str]:
    """Write version 1 of the four demo servables under root; returns the names written."""
    from app.modelzoo.blazeface import export_face_detector
    from app.modelzoo.cartoon import export_cartoon_model
    from app.modelzoo.encoder import export_encoder

    stages = DEFAULT_STAGES
    # Order matters: the gallery index is encoded by the encoder written before it.
    exporters: list[tuple[str, Callable[[Path], object]]] = [
        (stages["detect"].servable, export_face_detector),
        (stages["encode"].servable, export_encoder),
        (stages["translate"].servable, export_cartoon_model),
        (stages["search"].servable, lambda version_dir: index_demo_gallery(root, int(version_dir.name))),
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


def _open_backend() -> Backend:
    return current_app.extensions["serving"].backend


# -- check-models ------------------------------------------------------------------------------


def _describe(meta: SignatureMetadata) -> Iterator[str]:
    for kind, specs in (("in ", meta.inputs), ("out", meta.outputs)):
        for alias, spec in sorted(specs.items()):
            shape = (
                "?" if spec.shape is None else "[" + ",".join("?" if d is None else str(d) for d in spec.shape) + "]"
            )
            dtype = "string" if spec.dtype == np.dtype(object) else spec.dtype.name
            yield f"    {kind} {alias}: {dtype} {shape}"


def _image_input_problems(meta: SignatureMetadata, alias: str, *, fixed_size: bool) -> list[str]:
    spec = meta.inputs.get(alias)
    if spec is None:
        return []
    if spec.shape is None or len(spec.shape) != 4 or spec.shape[3] not in (None, 3):
        return [f"input {alias} must be [batch, height, width, 3]"]
    if fixed_size and (spec.shape[1] is None or spec.shape[2] is None):
        return [f"input {alias} must have a fixed height and width (the gateway resizes crops to it)"]
    return []


def check_stage(backend: Backend, stage_name: str, stage: Stage) -> tuple[list[str], list[str]]:
    """(description lines, problems) for one stage's servable against what the pipeline needs of it."""
    from app.errors import GatewayError

    try:
        meta = backend.metadata(stage.ref())
    except GatewayError as exc:
        return [], [f"cannot read its metadata: {exc.message}"]
    lines = [f"  signature {meta.name} (version {meta.version})", *_describe(meta)]
    problems = [f"input {alias} missing" for alias in stage.inputs.values() if alias not in meta.inputs]
    problems += [f"output {alias} missing" for alias in stage.outputs.values() if alias not in meta.outputs]
    extra = set(meta.inputs) - set(stage.inputs.values())
    problems += [f"input {alias} is not one the pipeline sends" for alias in sorted(extra)]
    if stage_name == "detect":
        spec = meta.inputs.get(stage.inputs["image"])
        if spec is not None and spec.dtype != np.uint8:
            problems.append(f"input {spec.name} must be uint8 (the detector gets the photo's pixels)")
        problems += _image_input_problems(meta, stage.inputs["image"], fixed_size=False)
    if stage_name in ("encode", "translate"):
        problems += _image_input_problems(meta, stage.inputs["image"], fixed_size=True)
    for signature in stage.extra_signatures.values():
        try:
            backend.metadata(stage.ref(signature=signature))
        except GatewayError:
            problems.append(f"no {signature!r} signature: k cannot be checked against the gallery size")
    return lines, problems


def register(app: Flask) -> None:
    """Add the model zoo commands to the app's CLI."""

    @app.cli.command("export-models")
    @click.option("--if-missing", is_flag=True, help="Keep servables that already have a version.")
    def export_models_command(if_missing: bool) -> None:
        """Write version 1 of the four demo servables and the demo gallery index into serving_models/."""
        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        root = servable_root(settings)
        written = export_models(root, if_missing=if_missing, echo=click.echo)
        click.echo(f"wrote {len(written)} servable(s) under {root}")

    @app.cli.command("build-index")
    @click.argument("gallery_dir", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--whole-image", is_flag=True, help="Use each photo whole; skip face detection.")
    @click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
    @click.option("--threshold", default=0.7, show_default=True, type=click.FloatRange(0, 1))
    def build_index_command(gallery_dir: Path, whole_image: bool, batch_size: int, threshold: float) -> None:
        """Index a folder of photos (jpg, png, webp) as a new latent_search_model version."""
        from app.modelzoo.gallery import EmptyGallery, build_index, describe, gallery_files

        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        if not gallery_dir.is_dir():
            raise click.ClickException(f"{gallery_dir} is not a folder")
        photos, _ = gallery_files(gallery_dir)
        backend = _open_backend()
        with click.progressbar(length=2 * max(len(photos), 1), label="indexing", file=None) as bar:
            try:
                report = build_index(
                    gallery_dir,
                    backend,
                    servable_root(settings) / DEFAULT_STAGES["search"].servable,
                    whole_image=whole_image,
                    threshold=threshold,
                    batch_size=batch_size,
                    progress=lambda _stage, count: bar.update(count),
                )
            except EmptyGallery as exc:
                raise click.ClickException(str(exc)) from exc
        for line in describe(report):
            click.echo(line)

    @app.cli.command("check-models")
    def check_models_command() -> None:
        """Print each pipeline servable's signature and what does not fit the pipeline."""
        backend = _open_backend()
        failed = 0
        for stage_name, stage in DEFAULT_STAGES.items():
            lines, problems = check_stage(backend, stage_name, stage)
            click.echo(f"{stage_name}: {stage.servable} - {'PROBLEMS' if problems else 'fits'}")
            for line in lines:
                click.echo(line)
            for problem in problems:
                click.echo(f"  problem: {problem}")
            failed += bool(problems)
        if failed:
            raise click.ClickException(f"{failed} servable(s) do not fit the pipeline")
