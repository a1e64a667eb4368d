"""A real gunicorn serving the gateway on a free loopback port, for tests that need real sockets and real workers.

    with live_gateway(config_path, tmp_path) as server:
        status, body = server.get("/healthz")

The server runs the project's own gunicorn.conf.py and ``app:create_app()``, configured only
through GATEWAY_* environment variables, exactly as `make run` and the container start it.
"""

from __future__ import annotations

import contextlib
import http.client
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import harness

LOOPBACK = "127.0.0.1"


@dataclass
class LiveServer:
    """A running gunicorn (started by ``bench/harness.py``'s launcher) and simple ways to talk to it."""

    server: harness.Server

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.server.port)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body). Raises on a network error or past ``timeout``."""
        connection = http.client.HTTPConnection(LOOPBACK, self.server.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.server.log_tail(chars)


@contextlib.contextmanager
def live_gateway(
    model_config: Path,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready_within_s: float = 90.0,
) -> Iterator[LiveServer]:
    """gunicorn with gunicorn.conf.py over the servables beside ``model_config``; stopped on exit, workers too.

    ``env`` adds or overrides GATEWAY_* variables (e.g. GATEWAY_THREADS). The server's output
    goes to a file in ``log_dir``; nothing else is written outside it.
    """
    environ = {
        "GATEWAY_MODEL_CONFIG": str(model_config),
        "GATEWAY_MODELS_ROOT": str(model_config.parent / "serving_models"),
        "GATEWAY_BACKEND": "local",
        "GATEWAY_POLL_INTERVAL": "0",
        "GATEWAY_WORKERS": "1",
        **(env or {}),
    }
    with harness.gunicorn("gateway", "app:create_app()", environ, log_dir, ready_timeout=ready_within_s) as server:
        yield LiveServer(server)
