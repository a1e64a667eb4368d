"""The model server's REST port (``--rest_api_port``): TF Serving's REST API and its Prometheus page, over cheroot.

The API is the gateway's own ``/v1`` surface (``app.views.tfserving_rest``), which answers TF
Serving's REST API as ``tensorflow_model_server`` 2.20 does, here over the embedded backend on the
server's runtime: the same servables, versions and labels as the gRPC port. What the port adds, as
TF Serving's http_server.cc does:

- a predict, classify or regress call runs with a deadline of ``--rest_api_timeout_in_ms``;
- with ``--rest_api_enable_cors_support``, the CORS headers on every API answer;
- with ``--monitoring_config_file``, the Prometheus page at its path (``text/plain``);
- every API request counted in ``:tensorflow:serving:request_count`` by its status, and timed in
  ``request_latency`` (entrypoint ``REST``) when it succeeded;
- any other path: 404.

The WSGI server is cheroot (CherryPy's), in this process, with ``--rest_api_num_threads``
threads. :meth:`RestServer.stop` closes the port, lets the requests in flight finish for up to the
grace period, then closes their connections.
"""

from __future__ import annotations

import logging
import threading
import time

import grpc
from cheroot import wsgi
from flask import Flask, Response, g, request
from werkzeug.exceptions import MethodNotAllowed, NotFound

from app.config import Settings
from app.errors import GatewayError
from app.model_server.monitoring import ServingMetrics
from app.serving.local_backend import LocalBackend
from app.serving.runtime import ModelRuntime
from app.views import tfserving_rest
from app.web import errors
from app.web.metrics import GatewayMetrics

log = logging.getLogger(__name__)

CORS_HEADERS = {  # AddCORSHeaders (http_rest_api_util.cc)
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}
_API = tfserving_rest.bp.name
_VERBS = ("predict", "classify", "regress")
# What a REST answer's status stands for when no server status came with it (the API's own refusals).
_CODE_OF_HTTP = {200: grpc.StatusCode.OK, 404: grpc.StatusCode.NOT_FOUND, 408: grpc.StatusCode.DEADLINE_EXCEEDED}


class _EmbeddedServing:
    """What the /v1 views ask of ``app.extensions["serving"]``: the backend."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend = backend

    def close(self) -> None:
        self.backend.close()


def create_rest_app(
    runtime: ModelRuntime,
    *,
    timeout: float | None,
    metrics: ServingMetrics | None = None,
    monitoring_path: str | None = None,
    cors: bool = False,
) -> Flask:
    """The REST port's WSGI app over ``runtime``; ``timeout`` is the deadline of a model call in seconds (None)."""
    app = Flask(__name__)
    # The views' shared settings: no body limit and no upload deadline, as TF Serving's REST server has none.
    app.config["GATEWAY_SETTINGS"] = Settings.load({"upload_timeout": 0}, environ={})
    app.config["MAX_CONTENT_LENGTH"] = None
    app.extensions["metrics"] = GatewayMetrics()  # the surface's own request counters live in its registry
    app.extensions["serving"] = _EmbeddedServing(LocalBackend(runtime=runtime, timeout=timeout))
    app.register_blueprint(tfserving_rest.bp)
    errors.init_app(app)
    app.register_error_handler(GatewayError, _render_gateway_error)
    app.register_error_handler(NotFound, _not_found)
    app.register_error_handler(MethodNotAllowed, _not_found)
    if monitoring_path is not None:
        if metrics is None:
            raise ValueError("a monitoring path needs the metrics it shows")

        def prometheus() -> Response:
            return Response(metrics.page(), status=200, content_type="text/plain")

        app.add_url_rule(monitoring_path, "prometheus", prometheus, methods=["GET"])

    @app.before_request
    def _started() -> None:
        g.rest_started = time.perf_counter()

    @app.after_request
    def _finished(response: Response) -> Response:
        if request.blueprint != _API:
            return response
        if cors:
            response.headers.update(CORS_HEADERS)
        if metrics is not None and request.method != "OPTIONS":
            servable, verb = g.get("model_api", ("", ""))
            code = g.get("serving_code") or _CODE_OF_HTTP.get(response.status_code, grpc.StatusCode.UNKNOWN)
            api = verb if verb in _VERBS else ""
            metrics.request(servable, api, "REST", code.name, time.perf_counter() - g.rest_started)
        return response

    return app


def _render_gateway_error(error: GatewayError):
    """Every GatewayError, rendered as the app renders it, its status noted for the request count."""
    if error.serving_status is not None:
        g.serving_code = error.serving_status.status
    return errors.render_error(error)


def _not_found(_error: Exception) -> Response:
    return Response("Not Found\n", status=404, content_type="text/plain")


class RestServer:
    """The REST port: ``app`` under cheroot on ``host:port`` (0: a free port), ``threads`` request threads."""

    def __init__(self, app: Flask, *, host: str = "0.0.0.0", port: int = 0, threads: int = 8) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.threads = threads
        self._server: wsgi.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> RestServer:
        """Bind the port (OSError if it cannot be had) and serve it from a thread of its own."""
        server = wsgi.Server(
            (self.host, self.port),
            self.app,
            numthreads=self.threads,
            max=self.threads,
            server_name="TensorFlow Serving compatible model server (app.model_server)",
            request_queue_size=128,
        )
        server.prepare()
        self.port = server.bind_addr[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve, name="rest-api", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 5.0) -> None:
        """Close the port, let requests in flight finish for up to ``grace`` seconds, then close what is left."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown_timeout = grace
        server.stop()
        if self._thread is not None:
            self._thread.join(timeout=grace + 5)
        self.app.extensions["serving"].close()
