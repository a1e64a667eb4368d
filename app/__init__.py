"""portrait gateway: the Flask app factory. Nothing is created at import time."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import IO, Any

from flask import Flask, Request, Response

from app.config import PROJECT_ROOT, Settings
from app.web.multipart import OnePassFormParser

log = logging.getLogger(__name__)


class InMemoryRequest(Request):
    """Keeps uploaded files in memory (bounded by MAX_CONTENT_LENGTH): an upload never touches the disk.

    Werkzeug would spool any file part over 500 KB to a temporary file. A multipart body of the usual
    shape is split in one pass (app.web.multipart).
    """

    form_data_parser_class = OnePassFormParser

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


class DebugRefused(RuntimeError):
    """Debug mode was asked for where it is not allowed (see ``app.web.security.debug_allowed``)."""


class GatewayFlask(Flask):
    """Flask that keeps uploads in memory and turns debug mode on only where ``debug_allowed`` says so.

    Debug mode is refused however it is asked for: FLASK_DEBUG, ``--debug`` or ``flask run
    --debugger`` (checked in create_app), ``app.debug = True`` (the CLI does this too),
    ``app.run(debug=True)`` or ``app.run(use_debugger=True)``.
    """

    request_class = InMemoryRequest
    debug_allowed = False
    debug_refusal = "debug mode is refused"

    @Flask.debug.setter  # type: ignore[attr-defined]
    def debug(self, value: bool) -> None:
        if value and not self.debug_allowed:
            raise DebugRefused(self.debug_refusal)
        Flask.debug.fset(self, value)  # type: ignore[attr-defined]

    def make_default_options_response(self) -> Response:
        """Flask's answer to OPTIONS, its Allow naming what the routes of the path answer, not a catch-all's methods."""
        from app.web.operations import allowed_methods

        response = self.response_class()
        response.allow.update(allowed_methods())
        return response

    def run(self, *args: Any, **options: Any) -> None:
        if options.get("use_debugger") and not self.debug_allowed:
            raise DebugRefused(self.debug_refusal)
        super().run(*args, **options)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway: settings (GATEWAY_* environment, then ``config``) -> backend -> blueprints."""
    from app import logs
    from app.web import security  # here, like the imports below: flask-limiter is not for light users

    settings = Settings.load(config)
    logs.configure(settings.log_level.upper())
    app = GatewayFlask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.debug_allowed = security.debug_allowed(settings)
    app.debug_refusal = security.debug_refusal()
    # FLASK_DEBUG=1 or `flask --debug` (which sets it), or `flask run --debugger` without debug mode.
    if (app.debug or security.debugger_requested()) and not app.debug_allowed:
        raise DebugRefused(app.debug_refusal)
    app.config["GATEWAY_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_upload_bytes
    # Imported here, not at module level: the serving stack pulls in TensorFlow, which light
    # users of the package (the config reader, the CLI's help) should not pay for.
    from app import commands
    from app.views import api, inference_v2, ops, pages, seldon, tfserving_rest
    from app.web import errors
    from app.web.extensions import Serving
    from app.web.metrics import GatewayMetrics

    metrics = GatewayMetrics()
    metrics.init_app(app)
    Serving(settings, metrics).init_app(app)
    commands.register(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(tfserving_rest.bp)  # TF Serving's REST API, /v1/
    app.register_blueprint(inference_v2.bp)  # the Open Inference Protocol, /v2/
    app.register_blueprint(seldon.bp)  # Seldon's prediction protocol, /seldon/<namespace>/<servable>/api/v1.0/
    security.init_app(app, settings)
    errors.init_app(app)
    return app
