"""What the HTTP benchmarks share: gunicorn processes on loopback, test portraits, concurrent clients, percentiles, RSS.

Standard library only (plus numpy and Pillow, which the gateway already needs, to make the
test photos). The benchmarks and the tests import it from here, the support package they share.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GUNICORN_CONFIG = REPO / "gunicorn.conf.py"
MB = 1 << 20


def model_config(path: str | None) -> Path:
    """The serving config to benchmark: ``path``, or the repository's after exporting the demo models if missing."""
    if path:
        return Path(path).resolve()
    flask = Path(sys.executable).with_name("flask")
    subprocess.run([str(flask), "--app", "app", "export-models", "--if-missing"], cwd=REPO, check=True)
    return REPO / "serving_models.config"


# -- servers ----------------------------------------------------------------------------------------

# What every benchmarked gateway runs with. Every benchmark client comes from 127.0.0.1, which the
# rate limiter sees as one client: the limit is off (it is tested in tests/contract/test_security.py).
BENCH_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GATEWAY_RATE_LIMIT": ""}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A gunicorn master on 127.0.0.1:port, started by :func:`gunicorn`; its log goes to ``log_path``."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def wait_ready(
    server: Server, path: str = "/readyz", timeout: float = 180.0, *, started: float | None = None, poll: float = 0.25
) -> float:
    """Poll ``path`` every ``poll`` seconds until it answers 200; fail early, with the server's log, if the process
    dies. Returns the seconds from ``started`` (a ``time.perf_counter()``; default now) to that 200, and gives up
    ``timeout`` seconds after ``started``."""
    if started is None:
        started = time.perf_counter()
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return time.perf_counter() - started
            finally:
                conn.close()
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{server.name}: no 200 from {path} after {timeout:.0f} s:\n{server.log_tail()}")
        time.sleep(poll)


def stop(server: Server) -> None:
    """gunicorn's quick shutdown (INT), then KILL for whatever is left of its process group.

    The KILL is not optional: a worker can hang on its way out (TensorFlow's threads at interpreter
    exit), and once the master is gone nothing else would ever reap it.
    """
    with contextlib.suppress(ProcessLookupError):
        server.process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)


@contextlib.contextmanager
def gunicorn(
    name: str,
    app_spec: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    pythonpath: Sequence[Path] = (),
    ready_path: str = "/readyz",
    ready_timeout: float = 180.0,
    root: Path = REPO,
) -> Iterator[Server]:
    """Run ``app_spec`` under gunicorn with the project's gunicorn.conf.py on a free loopback port, until ready.

    ``env`` is added to this process's environment; GATEWAY_BIND is set to the chosen port
    (gunicorn.conf.py reads it), so worker and thread counts come from the same settings for
    every app started this way. ``root``: another copy of the project (e.g. an earlier revision),
    whose app and gunicorn.conf.py are served instead.
    """
    port = free_port()
    log_path = Path(log_dir) / f"{name}-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "--config", str(Path(root) / GUNICORN_CONFIG.name)]
    for path in pythonpath:
        command += ["--pythonpath", str(path)]
    command.append(app_spec)
    full_env = {**os.environ, **env, "GATEWAY_BIND": f"127.0.0.1:{port}", "PYTHONUNBUFFERED": "1"}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), full_env.get("PYTHONPATH")]))
    with log_path.open("wb") as log:
        # A session of its own: the master and its workers form one process group, stopped as one.
        process = subprocess.Popen(
            command,
            cwd=root,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Server(name, port, process, log_path)
    try:
        wait_ready(server, ready_path, ready_timeout)
        yield server
    finally:
        stop(server)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (Linux /proc); 0 if it is gone."""
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        proc = Path("/proc") / str(current)
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
        for task in (proc / "task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and all its descendants, in seconds (Linux /proc):
    the live ones' own time plus what their children that have ended and been waited for used (a gunicorn worker
    recycled mid-run would otherwise take its time with it, and a difference of two readings could go negative).

    Unlike wall-clock latency, a request's CPU time hardly moves with the load of the machine, so the
    difference of two readings over a run, divided by its requests, is a steady figure of what a request costs.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        proc = Path("/proc") / str(current)
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime (fields 14 to 17 of proc(5)): its own and its waited-for children's
        total += sum(int(field) for field in fields[11:15])
        for task in (proc / "task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(child) for child in task.read_text().split())
    return total / ticks


# -- test photos ------------------------------------------------------------------------------------


def astronaut_jpeg(megapixels: float, quality: int = 92) -> bytes:
    """``skimage.data.astronaut()`` (a real 512x512 portrait) upscaled to about ``megapixels``, as a JPEG."""
    import numpy as np
    import skimage.data
    from PIL import Image

    side = max(64, round(math.sqrt(megapixels * 1e6)))
    image = Image.fromarray(np.asarray(skimage.data.astronaut())).resize((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def multipart(fields: Mapping[str, str], files: Mapping[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type: ``files`` maps a field to (file name, bytes, media type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data, media_type) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {media_type}\r\n\r\n"
        )
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- clients ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    seconds: float  # from sending the request to the last byte of the answer


@dataclass
class RunResult:
    """What one load run saw: per-request latencies of the good answers, errors by kind, wall time."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    replies: list[Reply] = field(default_factory=list)  # kept only when asked for
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        p50, p95, p99 = percentiles(self.latencies, (50, 95, 99))
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": len(self.latencies),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 3),
            "p50_ms": round(p50 * 1000, 1),
            "p95_ms": round(p95 * 1000, 1),
            "p99_ms": round(p99 * 1000, 1),
            "mean_ms": round(sum(self.latencies) / len(self.latencies) * 1000, 1) if self.latencies else math.nan,
        }


def percentiles(values: Sequence[float], points: Sequence[float]) -> list[float]:
    """Percentiles by linear interpolation between closest ranks (numpy's default); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return [math.nan for _ in points]
    out = []
    for point in points:
        rank = (len(ordered) - 1) * point / 100
        low = math.floor(rank)
        high = min(low + 1, len(ordered) - 1)
        out.append(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))
    return out


class Client:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port, reopened after any failure."""

    def __init__(self, port: int, timeout: float = 120.0) -> None:
        self.port = port
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def send(self, request: Request) -> Reply:
        if self._conn is None:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        started = time.perf_counter()
        try:
            self._conn.request(request.method, request.path, body=request.body, headers=dict(request.headers))
            response = self._conn.getresponse()
            body = response.read()
        except BaseException:
            self.close()
            raise
        seconds = time.perf_counter() - started
        if response.will_close:
            self.close()
        return Reply(response.status, dict(response.getheaders()), body, seconds)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def drive(
    port: int,
    make_request: Callable[[int, int], Request],
    concurrency: int,
    *,
    count: int | None = None,
    duration: float | None = None,
    keep_replies: bool = False,
    check: Callable[[Reply], str | None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick: float = 1.0,
) -> RunResult:
    """``concurrency`` clients, each sending ``make_request(client, n)`` until ``count`` requests in all were
    sent or ``duration`` seconds passed (whichever is given; both: whichever comes first).

    A reply counts as an error when its status is not 200 or ``check`` returns a reason;
    a failed connection counts by its exception type. ``on_tick`` is called about every
    ``tick`` seconds from this thread while the clients run (e.g. to sample memory).
    """
    if count is None and duration is None:
        raise ValueError("give a count, a duration, or both")
    result = RunResult(concurrency)
    lock = threading.Lock()
    issued = 0
    started = time.perf_counter()
    deadline = None if duration is None else started + duration

    def take() -> int | None:
        nonlocal issued
        with lock:
            if count is not None and issued >= count:
                return None
            if deadline is not None and time.perf_counter() >= deadline:
                return None
            issued += 1
            return issued - 1

    def client_loop(client_id: int) -> None:
        client = Client(port)
        try:
            while (n := take()) is not None:
                try:
                    reply = client.send(make_request(client_id, n))
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        result.errors[type(exc).__name__] += 1
                    continue
                problem = f"HTTP {reply.status}" if reply.status != 200 else (check(reply) if check else None)
                with lock:
                    if problem:
                        result.errors[problem] += 1
                    else:
                        result.latencies.append(reply.seconds)
                    if keep_replies:
                        result.replies.append(reply)
        finally:
            client.close()
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    all_done.set()

    running = [concurrency]
    all_done = threading.Event()
    threads = [threading.Thread(target=client_loop, args=(i,), name=f"client-{i}") for i in range(concurrency)]
    for thread in threads:
        thread.start()
    while not all_done.wait(tick):
        if on_tick is not None:
            on_tick()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    return result


def server_timing_entries(header: str) -> dict[str, dict[str, str]]:
    """``a;dur=1.5;desc="x", b`` -> {"a": {"dur": "1.5", "desc": "x"}, "b": {}}: each entry's parameters, unquoted."""
    entries: dict[str, dict[str, str]] = {}
    for entry in header.split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name:
            entries[name] = {
                key.strip(): value.strip().strip('"') for key, _, value in (param.partition("=") for param in params)
            }
    return entries


def parse_server_timing(header: str) -> dict[str, float]:
    """``a;dur=1.5, b;dur=2`` -> {"a": 1.5, "b": 2.0} (milliseconds); entries without a duration are skipped."""
    timings = {}
    for name, params in server_timing_entries(header).items():
        with contextlib.suppress(KeyError, ValueError):
            timings[name] = float(params["dur"])
    return timings


def model_critical_path(timing: dict[str, float]) -> float:
    """detect + max(encode + search, translate) in ms, from the per-call ``model-*`` entries of Server-Timing."""
    return timing.get("model-detect", 0.0) + max(
        timing.get("model-encode", 0.0) + timing.get("model-search", 0.0), timing.get("model-translate", 0.0)
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_results(results: Mapping, out: Path | None) -> None:
    """Write a benchmark's results as indented JSON to ``out`` (nothing when None)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
