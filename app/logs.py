"""The gateway's logging: its own lines at GATEWAY_LOG_LEVEL (TensorFlow's noise: app.serving.tensorflow_import)."""

from __future__ import annotations

import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure(level: str) -> None:
    """Send the gateway's own log lines to stderr at ``level`` (unless the host already set up logging)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("app").setLevel(level)


def quiet_command(level: str) -> None:
    """A command on the CLI prints its own lines: the gateway's INFO lines (servables loading, ...) and TensorFlow's
    notices stay out of them unless GATEWAY_LOG_LEVEL=DEBUG asks for everything. Warnings and errors still show."""
    if level.upper() != "DEBUG":
        logging.getLogger("app").setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
