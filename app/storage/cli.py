"""`flask --app app pull-models SRC DEST`: the storage initializer on Flask's CLI (docs/configuration.md)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
from flask import Flask

from app.storage.errors import PullError
from app.storage.pull import Retry, pull


def register(app: Flask) -> None:
    """Add `pull-models` to the app's CLI."""

    @app.cli.command("pull-models")
    @click.argument("src")
    @click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
    @click.option(
        "--if-missing", is_flag=True, help="Keep what DEST already has (each top-level entry); fetch only the rest."
    )
    @click.option(
        "--attempts",
        default=Retry.attempts,
        show_default=True,
        type=click.IntRange(1, 20),
        help="Tries of each request that fails for a reason that may pass (no connection, timeout, 429, 5xx).",
    )
    @click.option(
        "--backoff",
        default=Retry.first_delay,
        show_default=True,
        type=click.FloatRange(0, 60),
        help="Seconds to wait after the first failure; doubled after each next one.",
    )
    def pull_models_command(src: str, dest: Path, if_missing: bool, attempts: int, backoff: float) -> None:
        """Pull a model tree from SRC into the folder DEST, whole or not at all.

        SRC is s3://bucket/prefix (AWS_ENDPOINT_URL for any S3-compatible store), gs://bucket/prefix,
        http(s)://…/file (a .tar.gz, .tgz or .zip is unpacked), file:///path or a path. Credentials come from
        KServe's variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, S3_VERIFY_SSL,
        GOOGLE_APPLICATION_CREDENTIALS.
        """
        # An init container that is stopped still removes its staging folder on the way out.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
        try:
            report = pull(
                src,
                dest,
                if_missing=if_missing,
                retry=Retry(attempts=attempts, first_delay=backoff),
                echo=lambda line: click.echo(line, err=True),
            )
        except PullError as exc:
            raise click.ClickException(f"pull-models: {exc}") from None
        for entry in report.kept:
            click.echo(f"{entry}: already there, kept")
        click.echo(report.summary())
