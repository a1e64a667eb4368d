"""Real programs for the deployment tests: Debian's (redis-server, prometheus, nginx, kubectl) found or skipped,
started on a free loopback port, waited for, and stopped; and the thin gateway under gunicorn in front of them.

    redis = programs.require("redis-server", "REDIS", package="redis-server")
    with programs.running("redis", [redis, "--port", str(port)], tmp_path, port) as server:
        ...
    with programs.thin_gateway(tmp_path, workers=2, env={"GATEWAY_RATE_LIMIT": "10/minute"}) as gateway:
        ...

A program that is missing skips its test with the reason, unless ``GATEWAY_REQUIRE_<THING>=1``
(as ``.ci/run`` sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import harness
from tests.support.harness import free_port

LOOPBACK = "127.0.0.1"
__all__ = [
    "LOOPBACK", "Access", "Program", "access_log", "free_port", "port_open", "require", "running", "start",
    "thin_gateway",
]  # fmt: skip


def require(program: str, thing: str, *, package: str) -> str:
    """The path of ``program``; skips the test when it is missing, fails instead when GATEWAY_REQUIRE_<thing>=1."""
    found = shutil.which(program) or next(
        (str(Path(folder) / program) for folder in ("/usr/sbin", "/usr/bin") if (Path(folder) / program).is_file()),
        None,
    )
    if found:
        return found
    reason = f"{program} is not installed (Debian package {package}; .ci/run installs it)"
    if os.environ.get(f"GATEWAY_REQUIRE_{thing}") == "1":
        pytest.fail(f"{reason}, and GATEWAY_REQUIRE_{thing}=1 asks for this test to run")
    pytest.skip(reason)


def port_open(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port now."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=timeout):
        return True
    return False


@dataclass
class Program:
    """A program started by :func:`start`, in a process group of its own, its output in ``log_path``."""

    name: str
    argv: Sequence[str]
    port: int
    log_path: Path
    process: subprocess.Popen | None = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def launch(self, ready: Callable[[], bool] | None = None, timeout: float = 15.0) -> Program:
        """Start it (again, on the same port) and wait until ``ready()`` (default: the port accepts)."""
        ready = ready or (lambda: port_open(self.port))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would end it: no chance to save or say goodbye."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for whatever of its process group is left after 10 s."""
        self._signal(signal.SIGTERM, grace=10)

    def _signal(self, signum: int, grace: float = 10) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def start(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    port: int,
    *,
    ready: Callable[[], bool] | None = None,
    timeout: float = 15.0,
) -> Program:
    """Start ``argv`` (which listens on 127.0.0.1:``port``) with its output in ``log_dir``; returns once ready."""
    return Program(name, argv, port, Path(log_dir) / f"{name}-{port}.log").launch(ready, timeout)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    log_dir: Path,
    port: int,
    *,
    ready: Callable[[], bool] | None = None,
    timeout: float = 15.0,
) -> Iterator[Program]:
    """:func:`start`, and stop it on the way out, whatever happened."""
    program = start(name, argv, log_dir, port, ready=ready, timeout=timeout)
    try:
        yield program
    finally:
        program.stop()


# -- the thin gateway ------------------------------------------------------------------------------------

# gunicorn's access log, one line a request, naming the worker that answered and the client it was told of.
ACCESS_FORMAT = "access %(p)s %(m)s %(U)s %({x-forwarded-for}i)s %(s)s"
ACCESS_LINE = re.compile(r"^access <(\d+)> (\S+) (\S+) (\S+) (\d{3})$", re.MULTILINE)
WARM_UP_CLIENT = "192.0.2.254"


@dataclass(frozen=True)
class Access:
    pid: str
    method: str
    path: str
    client: str  # the X-Forwarded-For header as sent, "-" without one
    status: int


def access_log(server: harness.Server) -> list[Access]:
    text = server.log_path.read_text(errors="replace")
    return [Access(pid, m, path, who, int(status)) for pid, m, path, who, status in ACCESS_LINE.findall(text)]


@contextlib.contextmanager
def thin_gateway(log_dir: Path, *, workers: int = 1, env: Mapping[str, str] | None = None) -> Iterator[harness.Server]:
    """The gateway as its thin image runs it (GATEWAY_BACKEND=grpc) under gunicorn, with no model server behind it:
    enough for everything decided before a model call (the rate limit, refusals, metrics, health).

    One thread per worker. With several workers each takes at most two connections at a time, so that
    concurrent clients reach every worker (left alone, the kernel may hand hundreds of quick requests in a
    row to the same one); it returns once every worker has answered.
    """
    options = f"--access-logformat '{ACCESS_FORMAT}'"
    if workers > 1:
        options = "--worker-connections 2 " + options
    environ = {
        "GATEWAY_BACKEND": "grpc",
        "GATEWAY_SERVING_TARGET": f"{LOOPBACK}:{free_port()}",  # nothing listens: no request reaches a model
        "GATEWAY_TIMEOUT": "1",
        "GATEWAY_MODELS_ROOT": str(Path(log_dir) / "no-models"),
        "GATEWAY_WORKERS": str(workers),
        "GATEWAY_THREADS": "1",
        "GUNICORN_CMD_ARGS": options,
        **(env or {}),
    }
    with harness.gunicorn(
        "gateway", "app:create_app()", environ, log_dir, ready_path="/healthz", ready_timeout=60
    ) as g:
        _wait_for_every_worker(g, workers)
        yield g


def _wait_for_every_worker(server: harness.Server, workers: int, timeout: float = 60.0) -> None:
    """Concurrent /healthz requests until ``workers`` different workers have answered (a worker still booting
    answers nothing, and the first may take every request meanwhile)."""

    def ask() -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            connection = http.client.HTTPConnection(LOOPBACK, server.port, timeout=5)
            try:
                connection.request("GET", "/healthz", headers={"X-Forwarded-For": WARM_UP_CLIENT})
                connection.getresponse().read()
            finally:
                connection.close()

    deadline = time.monotonic() + timeout
    while len({a.pid for a in access_log(server) if a.client == WARM_UP_CLIENT}) < workers:
        if time.monotonic() > deadline:
            pytest.fail(f"not every one of {workers} workers answered within {timeout:.0f} s:\n{server.log_tail()}")
        threads = [threading.Thread(target=ask) for _ in range(2 * workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(0.05)
