"""portrait gateway: the Flask app factory. Nothing is created at import time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from app.config import PROJECT_ROOT, Settings
from app.errors import GatewayError


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway: settings (GATEWAY_* environment, then ``config``) -> backend -> blueprints."""
    settings = Settings.load(config)
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config["GATEWAY_SETTINGS"] = settings
    # Imported here, not at module level: the serving stack pulls in TensorFlow, which light
    # users of the package (the config reader, the CLI's help) should not pay for.
    from app.extensions import Serving
    from app.modelzoo import cli
    from app.views import ops

    Serving(settings).init_app(app)
    cli.register(app)

    app.register_blueprint(ops.bp)
    app.register_error_handler(GatewayError, _render_error)
    return app


def _render_error(error: GatewayError) -> ResponseReturnValue:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return jsonify(error.to_dict()), error.status_code, headers
