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
