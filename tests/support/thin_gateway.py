"""The thin gateway as processes: its cached virtualenv, gunicorn from any interpreter, mapped libraries, sizes.

The thin-gateway tests and ``bench/footprint.py`` share these (the benchmark imports them from here).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support import harness

REPO = harness.REPO
GATEWAY_REQUIREMENTS = REPO / "requirements-gateway.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "portrait-gateway"
# Variables of this process that must not reach a gateway started from another virtualenv.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


# -- the thin profile's virtualenv -------------------------------------------------------------------


def gateway_venv(cache: Path = CACHE, requirements: Path = GATEWAY_REQUIREMENTS) -> Path:
    """The python of a virtualenv with ``requirements`` alone: built with this interpreter once per set of
    requirements (comments aside) and Python version, kept in ``cache``, rebuilt whole if a build did not finish."""
    pinned = "\n".join(_requirements(requirements))
    digest = hashlib.sha256(f"{pinned}|{sys.version}|{sys.base_prefix}".encode()).hexdigest()
    venv = cache / f"venv-gateway-{digest[:16]}"
    python = venv / "bin" / "python"
    done = venv / ".complete"
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / f"{venv.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same virtualenv: wait for it
        if done.is_file():
            return python
        harness.log(f"building {venv} from {requirements.name} (once) ...")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if install.returncode != 0:
            raise RuntimeError(f"pip install -r {requirements.name} failed:\n{install.stdout[-3000:]}{install.stderr}")
        done.write_text(requirements.read_text(encoding="utf-8"), encoding="utf-8")
    return python


# -- gateways from any interpreter ------------------------------------------------------------------


@dataclass
class Started:
    """A gateway under gunicorn, and how long it took from the start of gunicorn to the first 200 from /healthz."""

    server: harness.Server
    healthz_s: float


def gateway_env(python: Path, env: Mapping[str, str], port: int) -> dict[str, str]:
    """This process's environment without its Python and GATEWAY_* settings, plus ``env``: what a gateway runs with."""
    inherited = {
        key: value for key, value in os.environ.items() if key not in _NOT_INHERITED and not key.startswith("GATEWAY_")
    }
    return {
        **inherited,
        **harness.BENCH_ENV,
        **env,
        "GATEWAY_BIND": f"127.0.0.1:{port}",
        "PYTHONPATH": str(REPO),  # the app from this checkout; every package from ``python``'s own environment
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@contextlib.contextmanager
def gateway(
    name: str,
    python: Path,
    app_spec: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    config: Path = harness.GUNICORN_CONFIG,
    timeout: float = 240.0,
) -> Iterator[Started]:
    """gunicorn from ``python``'s environment serving ``app_spec`` with ``config`` on a free loopback port, until it
    answers /healthz; stopped, workers too, on exit."""
    port = harness.free_port()
    log_path = Path(log_dir) / f"{name}-{port}.log"
    command = [str(python), "-m", "gunicorn", "--config", str(config), app_spec]
    with log_path.open("wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=gateway_env(python, env, port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = harness.Server(name, port, process, log_path)
    try:
        seconds = harness.wait_ready(server, "/healthz", timeout, started=started, poll=0.01)
        yield Started(server, seconds)
    finally:
        harness.stop(server)


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the master's child processes (Linux /proc)."""
    pids: list[int] = []
    for children in sorted((Path("/proc") / str(master) / "task").glob("*/children")):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in children.read_text().split()]
    return sorted(pids)


def rss_bytes(pid: int) -> int:
    """A process's resident memory (VmRSS), 0 if it is gone."""
    with contextlib.suppress(OSError):
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tensorflow_libraries(pid: int) -> list[str]:
    """The files of TensorFlow's runtime mapped into a process (its shared libraries), from /proc/<pid>/maps."""
    found = set()
    for line in (Path("/proc") / str(pid) / "maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            path = fields[5]
            name = Path(path).name
            if "/tensorflow/" in path or "tensorflow" in name:
                found.add(path)
    return sorted(found)


# -- sizes -------------------------------------------------------------------------------------------


def _requirements(path: Path) -> list[str]:
    """The requirement lines of a requirements file, ``-r`` includes followed."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith(("-r ", "--requirement ")):
            lines += _requirements(path.parent / line.split(maxsplit=1)[1])
        elif line and not line.startswith("-"):
            lines.append(line)
    return lines


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_size(site_packages: Path, requirements: Path) -> tuple[int, dict[str, int]]:
    """Bytes of the distributions in ``site_packages`` that ``requirements`` installs (its closure), by name."""
    from packaging.requirements import Requirement

    dists = {
        _canonical(dist.metadata["Name"]): dist for dist in importlib.metadata.distributions(path=[str(site_packages)])
    }
    todo = [Requirement(line) for line in _requirements(requirements)]
    seen: set[tuple[str, str]] = set()
    sizes: dict[str, int] = {}
    while todo:
        requirement = todo.pop()
        name = _canonical(requirement.name)
        extras = sorted(requirement.extras) or [""]
        if all((name, extra) in seen for extra in extras):
            continue
        seen.update((name, extra) for extra in extras)
        dist = dists.get(name)
        if dist is None:
            raise LookupError(f"{requirement} ({requirements.name}) is not installed in {site_packages}")
        if name not in sizes:
            files = (Path(dist.locate_file(file)) for file in dist.files or ())
            sizes[name] = sum(path.stat().st_size for path in files if path.is_file())
        for dependency in dist.requires or ():
            needed = Requirement(dependency)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(needed)
    return sum(sizes.values()), dict(sorted(sizes.items(), key=lambda item: -item[1]))


def site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def dockerfile_app_files() -> int:
    """Bytes of what the Dockerfile's ``source`` stage copies into every image (the app, its pages, its settings)."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text(encoding="utf-8"))
    stage, total = None, 0
    for line in (line.strip() for line in text.splitlines()):
        if line.upper().startswith("FROM "):
            stage = line.split()[-1] if " AS " in line.upper() else None
        elif stage == "source" and line.upper().startswith("COPY "):
            for source in line.split()[1:-1]:
                path = REPO / source
                files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
                total += sum(p.stat().st_size for p in files if "__pycache__" not in p.parts)
    return total
