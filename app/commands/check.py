"""`flask --app app check-models`: each pipeline servable against the pipeline file, verdicts and a test call."""

from __future__ import annotations

import json

import click
from flask import Flask, current_app

from app.errors import GatewayError
from app.logs import quiet_command
from app.modelzoo.check import check_models, report_lines


def register(app: Flask) -> None:
    """Add `check-models` to the app's CLI."""

    @app.cli.command("check-models")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for CI).")
    @click.option("--no-request", is_flag=True, help="Check metadata only; send no synthetic request.")
    def check_models_command(as_json: bool, no_request: bool) -> None:
        """Check each pipeline servable against the pipeline file; exit 1 on any misfit."""
        settings = current_app.config["GATEWAY_SETTINGS"]
        quiet_command(settings.log_level)
        serving = current_app.extensions["serving"]
        try:
            pipeline = serving.pipeline
        except GatewayError as exc:  # e.g. a serving_models.config that cannot be used
            raise click.ClickException(exc.message) from exc
        report = check_models(pipeline, model_config=str(settings.model_config_file), requests=not no_request)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2))
        else:
            for line in report_lines(report):
                click.echo(line)
        if not report.fits:
            raise SystemExit(1)
