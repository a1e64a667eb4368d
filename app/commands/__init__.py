"""The gateway's commands on Flask's CLI (`flask --app app ...`): export-models, build-index, check-models and more."""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Add every command to the app's CLI."""
    from app.commands import check, models
    from app.storage import cli as storage_cli

    models.register(app)
    check.register(app)
    storage_cli.register(app)  # pull-models: the storage initializer (app/storage/)
