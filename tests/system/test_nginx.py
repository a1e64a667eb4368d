"""deploy/nginx in front of a real gunicorn, with Debian's nginx on loopback.

- A client that trickles its headers, or its body, is cut off by nginx (408, connection closed) at the
  client timeouts, and never reaches gunicorn: with one gunicorn thread, other clients are served
  meanwhile. Straight at gunicorn, the same trickle holds that thread and the next client waits.
- Behind nginx, with GATEWAY_TRUSTED_PROXIES=1, a client-made X-Forwarded-For does not reset its rate
  limit; straight at gunicorn it would (why only the proxy may reach the gateway).
- Oversized bodies are refused by nginx; /metrics is not served to the public.

The test runs the shipped file, changing only the listen address, the upstream and (to keep the test
short) the two client timeouts. Requires nginx (``.ci/run`` installs Debian's nginx-light and sets
GATEWAY_REQUIRE_NGINX=1).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.config import Settings
from tests.support import harness, programs

REPO = Path(__file__).resolve().parents[2]
SITE = REPO / "deploy" / "nginx" / "portrait-gateway.conf"
CLIENT_TIMEOUT_S = 2  # what the test sets instead of the shipped 10 s
LIMIT = 5


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return programs.require("nginx", "NGINX", package="nginx-light")


def substitute(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{SITE.name} no longer has exactly one {old!r}"
    return text.replace(old, new)


def site_config(listen_port: int, upstream_port: int) -> str:
    text = SITE.read_text(encoding="utf-8")
    text = substitute(text, "listen 80;", f"listen 127.0.0.1:{listen_port};")
    text = substitute(text, "server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream_port};")
    text = substitute(text, "client_header_timeout 10s;", f"client_header_timeout {CLIENT_TIMEOUT_S}s;")
    return substitute(text, "client_body_timeout 10s;", f"client_body_timeout {CLIENT_TIMEOUT_S}s;")


def main_config(folder: Path, site: Path) -> str:
    """A minimal nginx.conf around the site file: everything nginx writes stays in ``folder``."""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root nginx's workers would run as nobody, who cannot write into the test's private folder.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log {folder / 'access.log'};\n{temp}\n    include {site};\n}}\n"
    )


@dataclass
class Stack:
    gateway: harness.Server
    nginx: programs.Program
    folder: Path

    def nginx_log(self) -> str:
        return (self.folder / "access.log").read_text(errors="replace")

    def gateway_log(self) -> str:
        return self.gateway.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def stack(nginx_binary: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One thin gateway with a single thread, behind nginx running deploy/nginx/portrait-gateway.conf."""
    folder = tmp_path_factory.mktemp("nginx")
    env = {"GATEWAY_RATE_LIMIT": f"{LIMIT}/minute", "GATEWAY_TRUSTED_PROXIES": "1"}
    with programs.thin_gateway(folder, workers=1, env=env) as g:
        port = programs.free_port()
        site = folder / "portrait-gateway.conf"
        site.write_text(site_config(port, g.port), encoding="utf-8")
        config = folder / "nginx.conf"
        config.write_text(main_config(folder, site), encoding="utf-8")
        argv = [nginx_binary, "-p", str(folder), "-c", str(config), "-e", str(folder / "error.log")]
        with programs.running("nginx", argv, folder, port) as nginx:
            yield Stack(g, nginx, folder)


def request(port: int, method: str, path: str, headers: dict | None = None, timeout: float = 5) -> tuple[int, float]:
    """One request on a fresh connection: (status, seconds)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        body = b"not a photo" if method == "POST" else None
        connection.request(method, path, body=body, headers={"Content-Type": "text/plain", **(headers or {})})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


@dataclass
class Trickle:
    """A client that sends ``head``, then one byte every 0.1 s (``drips`` of them; None: until cut off or
    ``give_up_after`` seconds), reading whatever comes back."""

    port: int
    head: bytes
    drips: int | None = None
    give_up_after: float = 8.0
    outcome: str = "still open"
    answer: bytes = b""
    seconds: float = 0.0
    #: Set once the head and the first drip have been sent.
    sending: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = time.monotonic()
        sent = 0
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as conn:
            conn.sendall(self.head)
            conn.settimeout(0.1)
            while time.monotonic() - started < self.give_up_after:
                try:
                    if self.drips is None or sent < self.drips:
                        conn.sendall(b"a")
                        sent += 1
                    self.sending.set()
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    self.outcome = "cut"
                    break
                if not chunk:
                    self.outcome = "closed"
                    break
                self.answer += chunk
            self.seconds = time.monotonic() - started

    @contextlib.contextmanager
    def running(self) -> Iterator[Trickle]:
        thread = threading.Thread(target=self.run)
        thread.start()
        try:
            assert self.sending.wait(10), (self.outcome, "the slow client never got its request out")
            yield self
        finally:
            thread.join(timeout=self.give_up_after + 5)


HEADERS = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
BODY = b"POST /api/v1/detect HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"


def test_the_shipped_limits_match_the_gateway() -> None:
    text = SITE.read_text(encoding="utf-8")
    assert re.search(r"^\s*client_header_timeout 10s;", text, re.MULTILINE)
    assert re.search(r"^\s*client_body_timeout 10s;", text, re.MULTILINE)
    assert re.search(r"^\s*proxy_request_buffering on;", text, re.MULTILINE)
    assert re.search(r"^\s*proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;", text, re.MULTILINE)
    size = re.search(r"^\s*client_max_body_size (\d+)m;", text, re.MULTILINE)
    assert size and int(size.group(1)) << 20 == Settings().max_upload_bytes


def test_the_config_passes_nginx_t(nginx_binary: str, tmp_path: Path) -> None:
    site = tmp_path / "portrait-gateway.conf"
    site.write_text(site_config(programs.free_port(), 8000), encoding="utf-8")
    config = tmp_path / "nginx.conf"
    config.write_text(main_config(tmp_path, site), encoding="utf-8")
    argv = [nginx_binary, "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "error.log")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("head", "drips"),
    [
        (HEADERS, None),  # client_header_timeout: all of the headers within it
        (BODY, 5),  # client_body_timeout: no byte of the body for that long
    ],
    ids=["trickled-headers", "stalled-body"],
)
def test_a_slow_client_is_cut_off_by_nginx_and_never_holds_the_gateway(
    stack: Stack, head: bytes, drips: int | None
) -> None:
    before = stack.gateway_log().count("access ")
    with Trickle(stack.nginx.port, head, drips).running() as trickle:
        # The gateway's only thread is free: another client is served through nginx at once.
        status, seconds = request(stack.nginx.port, "GET", "/healthz")
        assert (status, seconds < 1.0) == (200, True), seconds
    assert trickle.outcome == "closed", trickle.outcome
    assert trickle.answer == b""  # nginx closes a timed-out request without an answer, and logs 408
    assert CLIENT_TIMEOUT_S - 0.3 <= trickle.seconds < CLIENT_TIMEOUT_S + 3, trickle.seconds
    method, path = head.split(b" ")[:2]
    line = f'"{method.decode()} {path.decode()} HTTP/1.1" 408 '
    assert line in stack.nginx_log(), stack.nginx_log()[-500:]
    assert stack.gateway_log().count("access ") == before + 1  # the /healthz above, nothing of the slow client


def test_a_steadily_trickled_body_stays_in_nginx(stack: Stack) -> None:
    """client_body_timeout is per read: a body arriving a byte at a time is not cut off, but nginx holds it
    (limit_conn bounds how many a client may have) and the gateway never sees it until it is whole."""
    before = stack.gateway_log().count("access ")
    with Trickle(stack.nginx.port, BODY, give_up_after=CLIENT_TIMEOUT_S + 1.5).running() as trickle:
        for _ in range(3):
            status, seconds = request(stack.nginx.port, "GET", "/healthz")
            assert (status, seconds < 1.0) == (200, True), seconds
            time.sleep(0.5)  # a pace, not a wait: the three requests are spread over the trickle's life
    assert trickle.outcome == "still open" and trickle.answer == b""
    assert stack.gateway_log().count("access ") == before + 3


def test_straight_at_gunicorn_the_same_trickle_holds_its_only_thread(stack: Stack) -> None:
    """The contrast: without nginx, a slow client takes gunicorn's thread, and the next client waits."""
    trickle = Trickle(stack.gateway.port, HEADERS, give_up_after=2.5)
    with trickle.running(), pytest.raises(TimeoutError):
        request(stack.gateway.port, "GET", "/healthz", timeout=1.5)
    assert request(stack.gateway.port, "GET", "/healthz")[0] == 200  # free again once the trickle left


def test_a_spoofed_forwarded_for_does_not_reset_the_limit_behind_nginx(stack: Stack) -> None:
    statuses = [
        request(stack.nginx.port, "POST", "/api/v1/detect", {"X-Forwarded-For": f"192.0.2.{n}"})[0]
        for n in range(LIMIT + 3)
    ]
    assert statuses == [415] * LIMIT + [429] * 3  # one client (nginx saw 127.0.0.1), however it names itself
    # Straight at gunicorn, which believes one hop, each made-up address is a fresh client.
    direct = [
        request(stack.gateway.port, "POST", "/api/v1/detect", {"X-Forwarded-For": f"198.51.100.{n}"})[0]
        for n in range(LIMIT + 3)
    ]
    assert direct == [415] * (LIMIT + 3)


def test_oversized_bodies_and_metrics_stop_at_nginx(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.nginx.port), timeout=5) as conn:
        length = Settings().max_upload_bytes + 1
        conn.sendall(f"POST /api/v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        assert conn.recv(100).startswith(b"HTTP/1.1 413")
    assert request(stack.nginx.port, "GET", "/metrics")[0] == 404
    assert request(stack.gateway.port, "GET", "/metrics")[0] == 200  # still there for Prometheus, pod to pod
