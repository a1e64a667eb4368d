"""`flask --app app export-models`, `build-index` and `retire-versions`: thin shells over pure functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app

from app.config import Settings
from app.errors import GatewayError
from app.gallery.changes import GalleryChangeError
from app.gallery.descriptors import DescriptorFileError
from app.gallery.indexing import EmptyGallery, Interrupted
from app.gallery.publish import SEARCH_KINDS
from app.gallery.record import RecordError
from app.logs import quiet_command
from app.modelzoo.demo import export_models
from app.pipeline_config import PipelineConfig
from app.serving.tensorflow_import import import_tensorflow

# What build-index says in one line: a refused change, a bad descriptors file, nothing to index, a damaged
# record, a servable that is down or does not fit the pipeline file.
BUILD_ERRORS = (GalleryChangeError, DescriptorFileError, EmptyGallery, RecordError, GatewayError)


def register(app: Flask) -> None:
    """Add export-models and build-index to the app's CLI."""

    @app.cli.command("export-models")
    @click.option("--if-missing", is_flag=True, help="Keep servables that already have a version.")
    def export_models_command(if_missing: bool) -> None:
        """Write version 1 of the four demo servables and the demo gallery index into serving_models/."""
        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        quiet_command(settings.log_level)
        import_tensorflow(settings.log_level.upper())  # its start-up noise filtered, as the gateway's is
        root = settings.servable_root()
        written = export_models(root, if_missing=if_missing, echo=click.echo)
        click.echo(f"wrote {len(written)} servable(s) under {root}")

    @app.cli.command("build-index")
    @click.argument("gallery_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
    @click.option(
        "--descriptors",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Faces brought as descriptors: an .npz with `descriptors` [N, D] float32 and `names` [N].",
    )
    @click.option("--add", is_flag=True, help="Add the faces to the current gallery instead of making a new one.")
    @click.option("--replace", is_flag=True, help="With --add: a name the gallery holds is replaced, not refused.")
    @click.option(
        "--remove",
        "remove",
        multiple=True,
        metavar="PATTERN",
        help="Erase the faces whose names match (a glob such as 'person/*'; repeat for more).",
    )
    @click.option(
        "--remove-from",
        type=click.File("r", encoding="utf-8"),
        help="Erase the faces named by each line of a file (globs too; # comments).",
    )
    @click.option("--allow-empty", is_flag=True, help="Let --remove erase every face.")
    @click.option("--allow-unmatched", is_flag=True, help="Let --remove name patterns that match no face.")
    @click.option(
        "--search",
        type=click.Choice(SEARCH_KINDS),
        help="exact, ivf (approximate, for large galleries) or auto [default: the current gallery's; auto "
        "for a new one].",
    )
    @click.option("--lists", type=click.IntRange(1, 1 << 20), help="IVF: how many lists [default: from the size].")
    @click.option("--probes", type=click.IntRange(1, 1 << 20), help="IVF: lists searched per query [default: chosen].")
    @click.option("--retrain", is_flag=True, help="IVF: train the lists again on the gallery as it is now.")
    @click.option(
        "--shards",
        type=click.IntRange(1, 256),
        help="Split the gallery over this many search servables (<servable>_0, _1, ...).",
    )
    @click.option("--whole-image", is_flag=True, help="Each picture is already one face: skip face detection.")
    @click.option(
        "--all-faces", is_flag=True, help="Index every face of each photo (photo.jpg#1, #2, ... from the left)."
    )
    @click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
    @click.option("--workers", type=click.IntRange(1, 64), help="Photos decoded and detected at once [default: 4].")
    @click.option(
        "--threshold", type=click.FloatRange(0, 1), help="Lowest face score to index [default: the pipeline file's]."
    )
    @click.option("--resume", is_flag=True, help="Continue an interrupted run: its photos are not encoded again.")
    @click.option("--encoder", metavar="SERVABLE@VERSION", help="With --descriptors: what made them (for the record).")
    def build_index_command(gallery_dir: Path | None, remove: tuple[str, ...], **options: Any) -> None:  # fmt: skip
        """Write the next version of the gallery: from a folder of photos (JPEG, PNG, WebP, BMP) or descriptors,
        faces added to it (--add), or faces erased from it (--remove).

        Faces are found and encoded as the gateway does for an upload, so the same photo uploaded
        later finds its gallery entry. A change starts from the current version's record: only new
        photos are encoded, and no photo of a kept face is needed.
        """
        from app.gallery.build import BuildRequest, build_gallery

        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        if options["whole_image"] and options["all_faces"]:
            raise click.UsageError("--whole-image and --all-faces exclude each other")
        if gallery_dir is not None and options["descriptors"] is not None:
            raise click.UsageError("give a folder of photos or --descriptors, not both")
        if options["replace"] and not options["add"]:
            raise click.UsageError("--replace goes with --add")
        patterns = [*remove, *_lines(options.pop("remove_from"))]
        if gallery_dir is not None and not gallery_dir.is_dir():
            raise click.ClickException(f"{gallery_dir} is not a folder")
        quiet_command(settings.log_level)
        import_tensorflow(settings.log_level.upper())  # its start-up noise filtered, as the gateway's is
        serving = current_app.extensions["serving"]
        config: PipelineConfig = serving.pipeline_config
        request = BuildRequest(folder=gallery_dir, remove=patterns, **options)
        display = ProgressLine()
        try:
            result = build_gallery(request, serving.backend, config, settings.servable_root(), progress=display)
        except KeyboardInterrupt:  # pragma: no cover - a second Ctrl-C while the work is being saved
            raise click.Abort() from None
        except BUILD_ERRORS as exc:
            display.end()
            raise click.ClickException(getattr(exc, "message", None) or str(exc)) from exc
        except Interrupted as exc:
            display.end()
            click.echo(
                f"interrupted: {exc.done:,} of {exc.total:,} photos done and kept in {exc.work}; run the same command "
                "with --resume to continue",
                err=True,
            )
            raise SystemExit(130) from None
        display.end()
        for line in describe_build(result, settings.servable_root()):
            click.echo(line)

    @app.cli.command("retire-versions")
    @click.argument("servables", nargs=-1, required=True)
    @click.option(
        "--versions",
        "versions",
        required=True,
        multiple=True,
        type=click.IntRange(1),
        help="A version to delete (repeat, or give them comma-free one per option).",
    )
    def retire_versions_command(servables: tuple[str, ...], versions: tuple[int, ...]) -> None:
        """Delete old versions of servables from disk (e.g. those that still hold an erased face), refusing any
        that serving_models.config's version policy or a version label would still serve."""
        from app.gallery.retire import RetireError, retire_versions

        settings: Settings = current_app.config["GATEWAY_SETTINGS"]
        try:
            for line in retire_versions(settings, servables, versions):
                click.echo(line)
        except RetireError as exc:
            raise click.ClickException(str(exc)) from exc


def _lines(file: Any) -> list[str]:
    """The patterns of a --remove-from file: one a line, blank lines and # comments skipped."""
    if file is None:
        return []
    return [line.strip() for line in file.read().splitlines() if line.strip() and not line.strip().startswith("#")]


class ProgressLine:
    """Indexing progress: on a terminal, one line redrawn (photos, photos/s, ETA, faces); elsewhere nothing until
    the summary line build-index prints at the end."""

    def __init__(self) -> None:
        import sys

        self.live = sys.stderr.isatty()
        self.drawn = 0.0
        self.shown = False

    def __call__(self, state: Any) -> None:
        import time

        now = time.monotonic()
        if not self.live or (now - self.drawn < 0.2 and state.done < state.total):
            return
        self.drawn = now
        eta = "" if state.eta is None else f", ETA {int(state.eta) // 60}:{int(state.eta) % 60:02d}"
        click.echo(
            f"\rindexing {state.done:,}/{state.total:,} photos, {state.rate:.1f} photos/s{eta}, {state.faces:,} faces ",
            nl=False,
            err=True,
        )
        self.shown = True

    def end(self) -> None:
        if self.shown:
            click.echo("", err=True)
            self.shown = False


def describe_build(result: Any, root: Path) -> list[str]:
    """The lines build-index prints: what was written, what was found and not, what to do next."""
    from app.gallery.changes import retire_command

    published, report = result.published, result.report
    lines = []
    if report is not None:
        steps = sum(report.steps.values()) or 1.0
        share = ", ".join(f"{step} {seconds / steps:.0%}" for step, seconds in report.steps.items() if seconds)
        done = report.photos - report.resumed
        rate = done / report.seconds if report.seconds else 0.0
        resumed = f" ({report.resumed:,} from the interrupted run)" if report.resumed else ""
        lines.append(
            f"encoded {len(report.indexed):,} faces from {report.photos:,} photos{resumed} in {report.seconds:.1f} s "
            f"({rate:.1f} photos/s; {share})"
        )
    if result.added:
        lines.append(
            f"added {result.added:,} faces" + (f" ({len(result.replaced)} replaced)" if result.replaced else "")
        )
    if result.removed or result.unmatched:
        lines.append(f"removed {len(result.removed):,} faces")
        for pattern in result.unmatched:
            lines.append(f"matched no face: {pattern}")
    for shard in published.shards:
        how = shard.search.get("kind", "exact")
        if how == "ivf":
            how += f", {shard.search.get('lists')} lists, {shard.search.get('probes')} probes"
        linked = " (unchanged, linked)" if shard.linked else ""
        lines.append(
            f"gallery version {published.version}: {shard.faces:,} faces in {shard.version_dir} ({how}){linked}"
        )
        if shard.advice:
            lines.append(f"  {shard.servable}: {shard.advice}")
    if not published.shards:
        lines.append(f"the gallery is empty now: no version {published.version} was written")
    if report is not None:
        lines += [f"unreadable: {name}: {reason}" for name, reason in report.unreadable]
        lines += [f"no face found: {name}" for name in report.no_face]
        lines += [f"skipped (not a photo's file name): {name}" for name in report.skipped]
    if len(result.servables) > 1:
        lines.append(
            "the gallery is sharded: [search] shards in pipeline.toml and serving_models.config must name "
            + ", ".join(result.servables)
        )
    if result.older_holding:
        held = ", ".join(f"{version} ({count if count >= 0 else 'unreadable'})" for version, count in
                         sorted(result.older_holding.items()))  # fmt: skip
        lines.append(f"older versions on disk still hold these faces: {held}; to retire them:")
        lines += [f"  {step}" for step in retire_command(result.servables, result.older_holding, root)]
    elif result.removed:
        lines.append("no older version on disk holds these faces")
    return lines
