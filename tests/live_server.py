"""A real gunicorn serving the gateway on a free loopback port, for tests that need real sockets and real workers.

    with live_gateway(config_path, tmp_path) as server:
        status, body = server.get("/healthz")

The server runs the project's own gunicorn.conf.py and ``app:create_app()``, configured only
through GATEWAY_* environment variables, exactly as `make run` and the container start it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.config import PROJECT_ROOT

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@dataclass
class LiveServer:
    """A running gunicorn: its address, its process, and the file its output goes to."""

    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def address(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """One request on a fresh connection: (status, body). Raises on a network error or past ``timeout``."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        return self.request("GET", path, timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def wait_until_ready(server: LiveServer, deadline_s: float) -> None:
    """Poll /readyz until it answers 200; a clear error with the server's log if it dies or takes too long."""
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            status, body = server.get("/readyz", timeout=2.0)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        time.sleep(0.2)
    raise TimeoutError(f"gunicorn not ready after {deadline_s:g} s (last: {last}):\n{server.log_tail()}")


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
    port = free_port()
    environ = {
        **os.environ,
        "GATEWAY_BIND": f"{LOOPBACK}:{port}",
        "GATEWAY_MODEL_CONFIG": str(model_config),
        "GATEWAY_MODELS_ROOT": str(model_config.parent / "serving_models"),
        "GATEWAY_BACKEND": "local",
        "GATEWAY_POLL_INTERVAL": "0",
        "GATEWAY_WORKERS": "1",
        **(env or {}),
    }
    log_path = log_dir / f"gunicorn-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "app:create_app()"]
    with log_path.open("wb") as log:
        # A session of its own: the master and its workers form one process group, stopped as one.
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = LiveServer(port, process, log_path)
    try:
        wait_until_ready(server, ready_within_s)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """gunicorn's quick shutdown (INT), then KILL for whatever is left of its process group.

    The KILL is not optional: a worker can hang on its way out (TensorFlow's threads at interpreter
    exit), and once the master is gone nothing else would ever reap it.
    """
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
