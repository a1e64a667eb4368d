"""The rate limit shared through a real Redis (Debian's redis-server on a free loopback port) by real gunicorn workers.

- Two workers share one count: ``10/minute`` lets exactly 10 photo requests of a client through, whichever
  worker answers each.
- A Redis that accepts connections and never answers: every request is still answered within 1 s (the
  shared count fails open to the worker's own), with one warning in the log.
- Redis killed mid-run: requests are still served and the loss is logged; when Redis is back (with its
  append-only file, as a restarted pod with a volume would be) the workers go back to it and the count
  carries on from where it was.

The gateway is the thin one (GATEWAY_BACKEND=grpc, no model server needed; ``programs.thin_gateway``): a
photo request with a body that is not a photo is refused 415 after the limit counted it, so no model runs.
GATEWAY_TRUSTED_PROXIES=1 and an X-Forwarded-For per test client give each phase clients of its own.
Requires redis-server (``.ci/run`` installs it and sets GATEWAY_REQUIRE_REDIS=1).
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from limits.storage import storage_from_string

from app.config import Settings
from app.web.security import storage_options
from tests.support import harness, programs
from tests.support.waiting import wait_for

LIMIT = "10/minute"
ALLOWED = 415  # the junk body is refused only after the limit let the request through
LIMITED = 429
LOST = "rate limit storage redis://127.0.0.1:{port}/0 failed or timed out"
BACK = "rate limit storage redis://127.0.0.1:{port}/0 answers again"


@pytest.fixture(scope="module")
def redis_server_binary() -> str:
    return programs.require("redis-server", "REDIS", package="redis-server")


def start_redis(binary: str, folder: Path, port: int | None = None) -> programs.Program:
    """redis-server on loopback, with an append-only file fsynced on every write, so a kill -9 loses no count."""
    port = port or programs.free_port()
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
        "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
    ]  # fmt: skip
    return programs.start("redis", argv, folder, port)


def gateway(log_dir: Path, storage: str, *, workers: int, limit: str = LIMIT):
    """The thin gateway with the rate limit in ``storage``; GATEWAY_TRUSTED_PROXIES=1 names each test's clients."""
    env = {"GATEWAY_RATE_LIMIT": limit, "GATEWAY_RATE_LIMIT_STORAGE": storage, "GATEWAY_TRUSTED_PROXIES": "1"}
    return programs.thin_gateway(log_dir, workers=workers, env=env)


def photo(port: int, client: str) -> tuple[int, float]:
    """One photo request from ``client`` on a fresh connection: (status, seconds to the whole answer)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "text/plain", "X-Forwarded-For": client}
        connection.request("POST", "/api/v1/detect", body=b"not a photo", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def burst(port: int, client: str, count: int, concurrency: int = 6) -> list[tuple[int, float]]:
    """``count`` photo requests from ``client``, ``concurrency`` at a time: more than one worker takes some."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    left = iter(range(count))

    def run() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            answer = photo(port, client)
            with lock:
                results.append(answer)

    threads = [threading.Thread(target=run) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def served_by(server: harness.Server, client: str) -> Counter:
    """(worker pid, status) -> how many of ``client``'s photo requests, from the access log."""
    return Counter((a.pid, a.status) for a in programs.access_log(server) if a.client == client and a.method == "POST")


def wait_for_log(server: harness.Server, predicate, timeout: float, poke=None) -> str:
    """The server's log once ``predicate(log)`` holds, calling ``poke()`` meanwhile; fails after ``timeout``."""

    def log() -> str:
        if poke is not None:
            poke()
        return server.log_path.read_text(errors="replace")

    return wait_for(log, timeout, "the log to show what was waited for", until=predicate, every=0.1)


def test_two_workers_share_one_count_in_redis(redis_server_binary: str, tmp_path: Path) -> None:
    redis = start_redis(redis_server_binary, tmp_path / "redis")
    try:
        with gateway(tmp_path, f"redis://127.0.0.1:{redis.port}/0", workers=2) as server:
            client = "203.0.113.10"
            statuses = Counter(status for status, _ in burst(server.port, client, 30))
            assert statuses == {ALLOWED: 10, LIMITED: 20}, statuses
            # Both workers must have answered some of them, or the test would not show sharing.
            for _ in range(20):
                if len({pid for pid, _ in served_by(server, client)}) == 2:
                    break
                assert {status for status, _ in burst(server.port, client, 6)} == {LIMITED}
            by_worker = served_by(server, client)
            assert len({pid for pid, _ in by_worker}) == 2, by_worker
            assert sum(n for (_, status), n in by_worker.items() if status == ALLOWED) == 10, by_worker
            assert "Traceback" not in server.log_tail(100_000)
    finally:
        redis.stop()


def test_per_worker_memory_counts_would_let_more_through(tmp_path: Path) -> None:
    """The same traffic with memory:// storage: each worker counts alone, so the client gets more than 10.

    This is what the Redis test above rules out; it also shows that the traffic reaches both workers.
    """
    with gateway(tmp_path, "memory://", workers=2) as server:
        client = "203.0.113.11"
        burst(server.port, client, 30)
        for _ in range(20):
            if len({pid for pid, _ in served_by(server, client)}) == 2:
                break
            burst(server.port, client, 6)
        by_worker = served_by(server, client)
        assert len({pid for pid, _ in by_worker}) == 2, by_worker
        assert sum(n for (_, status), n in by_worker.items() if status == ALLOWED) > 10, by_worker


class SilentServer:
    """A TCP server that accepts every connection and reads from it for ever, never answering: a hung Redis."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = 0
        self._connections: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._connections.append(connection)
            threading.Thread(target=self._swallow, args=(connection,), daemon=True).start()

    @staticmethod
    def _swallow(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while connection.recv(65536):
                pass

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for connection in self._connections:
            with contextlib.suppress(OSError):
                connection.close()


def test_a_redis_that_never_answers_fails_open_within_a_second(tmp_path: Path) -> None:
    silent = SilentServer()
    try:
        with gateway(tmp_path, f"redis://127.0.0.1:{silent.port}/0", workers=1) as server:
            answers = [photo(server.port, "203.0.113.20") for _ in range(30)]
            assert silent.accepted >= 1  # the gateway did try it
            slowest = max(seconds for _, seconds in answers)
            assert slowest < 1.0, answers
            # Counted by the worker alone meanwhile: still the limit, never a 5xx.
            assert Counter(status for status, _ in answers) == {ALLOWED: 10, LIMITED: 20}, answers
            log = server.log_tail(100_000)
            assert log.count(LOST.format(port=silent.port)) == 1, log[-3000:]
            assert "Traceback" not in log
    finally:
        silent.close()


def test_redis_killed_mid_run_then_back_the_count_resumes(redis_server_binary: str, tmp_path: Path) -> None:
    redis = start_redis(redis_server_binary, tmp_path / "redis")
    lost, back = LOST.format(port=redis.port), BACK.format(port=redis.port)
    try:
        with gateway(tmp_path, f"redis://127.0.0.1:{redis.port}/0", workers=2, limit="10/hour") as server:
            before = "203.0.113.30"
            assert Counter(status for status, _ in burst(server.port, before, 4)) == {ALLOWED: 4}

            redis.kill()
            during = burst(server.port, "203.0.113.31", 20)
            # Until both workers have noticed.
            wait_for_log(
                server,
                lambda text: text.count(lost) == 2,
                timeout=20,
                poke=lambda: during.extend(burst(server.port, "203.0.113.31", 6)),
            )
            assert max(seconds for _, seconds in during) < 1.0, during
            assert {status for status, _ in during} <= {ALLOWED, LIMITED}, during

            redis.launch()  # the same port and data folder: it reads back its append-only file
            visitors = (f"198.51.100.{n}" for n in range(1, 250))  # clients of their own: none reaches a limit
            # Each worker finds it again at its next back-off check (1 to 32 s after its last one).
            log = wait_for_log(
                server,
                lambda text: text.count(back) == 2,
                timeout=45,
                poke=lambda: burst(server.port, next(visitors), 4),
            )
            assert log.count(lost) == 2  # one warning per worker, not one per request
            assert "Traceback" not in log

            # The count of the client from before the outage carries on in Redis: 4 used, 6 left.
            after = Counter(status for status, _ in burst(server.port, before, 10))
            assert after == {ALLOWED: 6, LIMITED: 4}, after
            assert "Traceback" not in server.log_tail(100_000)
    finally:
        redis.stop()


# -- the storage URI ------------------------------------------------------------------------------------


def test_redis_timeouts_default_to_a_quarter_second_and_the_uri_wins() -> None:
    for uri, expected in (
        ("redis://127.0.0.1:1/0", (0.25, 0.25)),
        ("redis://127.0.0.1:1/0?socket_timeout=2&socket_connect_timeout=0.5", (2.0, 0.5)),
    ):
        pool = storage_from_string(uri, **storage_options(uri)).storage.connection_pool
        kwargs = pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == expected, uri
    assert storage_options("memory://") == {"wrap_exceptions": True}


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "61"])
def test_a_bad_redis_timeout_is_refused_naming_the_setting_and_hiding_the_password(value: str) -> None:
    uri = f"redis://:s3cret@redis:6379/0?socket_timeout={value}"
    with pytest.raises(ValueError, match="GATEWAY_RATE_LIMIT_STORAGE") as caught:
        Settings.load(environ={"GATEWAY_RATE_LIMIT_STORAGE": uri})
    assert f"socket_timeout={value!r}" in str(caught.value) and "e.g. socket_timeout=0.25" in str(caught.value)
    assert "s3cret" not in str(caught.value) and ":***@redis" in str(caught.value)
