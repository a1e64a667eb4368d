"""Footprint of the gateway process: today's (TensorFlow loaded) and the thin one (no TensorFlow), in one run.

Two install profiles serve the same gateway with GATEWAY_BACKEND=grpc, side by side:

``full``  the project's virtualenv (requirements.txt: TensorFlow and all) running the gateway as it was before
          the thin client: every worker imports the official tensorflow-serving-api stubs, and so TensorFlow.
``thin``  a virtualenv with requirements-gateway.txt alone, built once per content of that file and cached
          under ~/.cache/portrait-gateway/, running ``app:create_app()``.

Both call the TF Serving protocol double (tests/tf_serving_double.py, in this process) over the demo
servables, under the project's gunicorn.conf.py with one worker. For each profile:

``import``     seconds to import and build the app (what a worker does before it serves), in a fresh
               interpreter, median of ``--imports`` runs after one untimed run;
``healthz``    seconds from starting gunicorn to the first 200 from /healthz (polled every 10 ms), median of
               ``--starts`` starts, the profiles taking turns;
``rss``        the worker's resident memory after ``--requests`` requests of the whole pipeline
               (POST /detect_face/image, 4 clients), and whether a TensorFlow library is mapped in it;
``installed``  the size of the profile's installed distributions: the requirement file and everything it
               pulls in, by the files each distribution's RECORD lists (installers like pip not counted);
``image``      an estimate for each Dockerfile target: the base image, the installed profile and the app's
               files. No Docker engine runs here: the base image's size is the figure Docker reports for it
               (BASE_IMAGE_MB), not a measurement, so the estimates are only as good as that figure.

Targets, for the thin profile: RSS per worker <= 120 MB, /healthz <= 2 s after start, installed <= 300 MB
(MB = 2**20 bytes, as in the other benchmarks).

    .venv/bin/python bench/footprint.py                            # writes bench/results/footprint.json
    .venv/bin/python bench/footprint.py --smoke --json /tmp/f.json # few requests, one start: the script works
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__:  # imported: tests, or a gunicorn worker loading app_with_tensorflow_stubs()
    from bench import harness
else:  # run as a script: bench/ is on sys.path; the repository too, for the app, tests/ and gunicorn's app spec
    import harness

    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "footprint.json"
GATEWAY_REQUIREMENTS = REPO / "requirements-gateway.txt"
FULL_REQUIREMENTS = REPO / "requirements.txt"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "portrait-gateway"
MB = harness.MB
# python:3.11-slim-bookworm (amd64) as `docker images` lists it, uncompressed: Docker's figure, not measured here.
BASE_IMAGE_MB = 125.0
TARGETS = {"rss_per_worker_mb": 120.0, "healthz_s": 2.0, "installed_mb": 300.0}
PROFILES = ("full", "thin")
APP_SPECS = {"full": "bench.footprint:app_with_tensorflow_stubs()", "thin": "app:create_app()"}
# Variables of this process that must not reach a gateway started from another virtualenv.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


def app_with_tensorflow_stubs():
    """Today's gateway, for comparison: the app as it ran before the thin client, whose serving modules imported
    the official tensorflow-serving-api stubs, and with them TensorFlow, in every worker."""
    from tensorflow_serving.apis import (  # noqa: F401
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow_serving.config import model_server_config_pb2  # noqa: F401

    from app import create_app

    return create_app()


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
        harness.log(f"footprint: building {venv} from {requirements.name} (once) ...")
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


def _site_packages(python: Path) -> Path:
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


# -- measuring --------------------------------------------------------------------------------------

_IMPORT_PROBE = """
import importlib, json, sys, time
started = time.perf_counter()
module, _, factory = {spec!r}.partition(":")
getattr(importlib.import_module(module), factory.removesuffix("()"))()
print(json.dumps({{"seconds": time.perf_counter() - started, "tensorflow": "tensorflow" in sys.modules}}))
"""


def import_seconds(python: Path, app_spec: str, env: Mapping[str, str], runs: int) -> dict:
    """Import and build the app as a worker does, in fresh interpreters: one untimed run, then ``runs`` timed."""
    environ = gateway_env(python, env, 0)
    samples, tensorflow = [], None
    for index in range(runs + 1):
        result = subprocess.run(
            [str(python), "-c", _IMPORT_PROBE.format(spec=app_spec)],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"importing {app_spec} with {python} failed:\n{result.stderr[-3000:]}")
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        tensorflow = probe["tensorflow"]
        if index:
            samples.append(probe["seconds"])
    return {"median_s": round(statistics.median(samples), 3), "runs_s": [round(s, 3) for s in samples],
            "tensorflow_imported": tensorflow}  # fmt: skip


def page_request() -> harness.Request:
    """The whole pipeline, as a browser asks for it: the astronaut portrait posted to the result page."""
    body, content_type = harness.multipart(
        {"k": "5"}, {"image_file": ("portrait.jpg", harness.astronaut_jpeg(0.25), "image/jpeg")}
    )
    return harness.Request("POST", "/detect_face/image", body, {"Content-Type": content_type, "Accept": "text/html"})


def measure(config: Path, *, starts: int, imports: int, requests: int) -> dict:
    """Both profiles against one protocol double over the servables of ``config``."""
    from tests.tf_serving_double import TFServingDouble

    pythons = {"full": Path(sys.executable), "thin": gateway_venv()}
    request = page_request()
    results: dict[str, dict] = {name: {"python": str(python)} for name, python in pythons.items()}
    with (
        TFServingDouble(config, poll_interval=0) as double,
        tempfile.TemporaryDirectory(prefix="bench-footprint-") as work,
    ):
        env = {
            "GATEWAY_BACKEND": "grpc",
            "GATEWAY_SERVING_TARGET": double.address,
            "GATEWAY_MODEL_CONFIG": str(config),
            "GATEWAY_MODELS_ROOT": str(config.parent / "serving_models"),
            "GATEWAY_WORKERS": "1",
        }
        for name, python in pythons.items():
            harness.log(f"footprint: {name}: import ...")
            results[name]["import"] = import_seconds(python, APP_SPECS[name], env, imports)
        healthz: dict[str, list[float]] = {name: [] for name in PROFILES}
        for start in range(starts):
            for name in PROFILES if start % 2 == 0 else PROFILES[::-1]:
                harness.log(f"footprint: {name}: start {start + 1}/{starts} ...")
                with gateway(name, pythons[name], APP_SPECS[name], env, Path(work)) as started:
                    healthz[name].append(started.healthz_s)
                    if start == 0:
                        results[name]["worker"] = _load(started, request, requests)
        for name in PROFILES:
            results[name]["healthz"] = {
                "median_s": round(statistics.median(healthz[name]), 3),
                "starts_s": [round(s, 3) for s in healthz[name]],
            }
    app_files = dockerfile_app_files()
    for name, requirements, target in (("full", FULL_REQUIREMENTS, "tools"), ("thin", GATEWAY_REQUIREMENTS, "gateway")):
        total, by_distribution = installed_size(_site_packages(pythons[name]), requirements)
        results[name]["installed"] = {
            "requirements": requirements.name,
            "mb": round(total / MB, 1),
            "largest_mb": {dist: round(size / MB, 1) for dist, size in list(by_distribution.items())[:8]},
        }
        results[name]["image"] = {
            "target": target,
            "estimate_mb": round(BASE_IMAGE_MB + (total + app_files) / MB, 1),
            "base_image_mb": BASE_IMAGE_MB,
            "app_files_mb": round(app_files / MB, 2),
        }
    return results


def _load(started: Started, request: harness.Request, count: int) -> dict:
    """Send ``count`` page requests (4 clients); then the worker's memory and the TensorFlow libraries it maps."""
    workers = worker_pids(started.server.pid)
    idle = {pid: rss_bytes(pid) for pid in workers}
    outcome = harness.drive(started.server.port, lambda _c, _n: request, 4, count=count)
    workers = worker_pids(started.server.pid)
    return {
        "workers": len(workers),
        "requests": outcome.summary(),
        "rss_idle_mb": round(max(idle.values(), default=0) / MB, 1),
        "rss_mb": round(max((rss_bytes(pid) for pid in workers), default=0) / MB, 1),
        "tensorflow_libraries": sorted({path for pid in workers for path in tensorflow_libraries(pid)}),
    }


def judge(results: dict) -> dict:
    thin = results["thin"]
    values = {
        "rss_per_worker_mb": thin["worker"]["rss_mb"],
        "healthz_s": thin["healthz"]["median_s"],
        "installed_mb": thin["installed"]["mb"],
    }
    return {name: {"value": values[name], "target": f"<= {limit}", "met": values[name] <= limit}
            for name, limit in TARGETS.items()}  # fmt: skip


def table(results: dict) -> str:
    full, thin = results["full"], results["thin"]

    def row(label: str, a: float | str, b: float | str, target: str = "") -> str:
        ratio = f"{b / a:.2f}x" if isinstance(a, float) and isinstance(b, float) and a else ""
        return f"{label:<38}{a!s:>12}{b!s:>12}{ratio:>10}  {target}"

    verdict = {name: ("met" if t["met"] else "NOT MET") for name, t in results["targets"].items()}
    mapped = {name: "yes" if r["worker"]["tensorflow_libraries"] else "no" for name, r in (("f", full), ("t", thin))}
    lines = [
        f"{'':<38}{'full':>12}{'thin':>12}{'thin/full':>10}  target (thin)",
        row("import + create_app (s)", full["import"]["median_s"], thin["import"]["median_s"]),
        row("gunicorn start -> /healthz 200 (s)", full["healthz"]["median_s"], thin["healthz"]["median_s"],
            f"<= {TARGETS['healthz_s']} s: {verdict['healthz_s']}"),
        row("worker RSS idle (MB)", full["worker"]["rss_idle_mb"], thin["worker"]["rss_idle_mb"]),
        row(f"worker RSS after {thin['worker']['requests']['requests']} requests (MB)", full["worker"]["rss_mb"],
            thin["worker"]["rss_mb"], f"<= {TARGETS['rss_per_worker_mb']:g} MB: {verdict['rss_per_worker_mb']}"),
        row("TensorFlow mapped in the worker", mapped["f"], mapped["t"]),
        row("result pages per second (4 clients)", full["worker"]["requests"]["throughput_rps"],
            thin["worker"]["requests"]["throughput_rps"]),
        row("installed profile (MB)", full["installed"]["mb"], thin["installed"]["mb"],
            f"<= {TARGETS['installed_mb']:g} MB: {verdict['installed_mb']}"),
        row(f"image estimate: {full['image']['target']} / {thin['image']['target']} (MB)",
            full["image"]["estimate_mb"], thin["image"]["estimate_mb"],
            f"base image {BASE_IMAGE_MB:g} MB as Docker reports it; not built here"),
    ]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one start, a few requests: checks that the script works")
    parser.add_argument("--model-config", help="serving_models.config to serve (default: the repository's)")
    parser.add_argument("--json", default=None, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--starts", type=int, default=3, help="gunicorn starts per profile")
    parser.add_argument("--imports", type=int, default=3, help="timed imports per profile")
    parser.add_argument("--requests", type=int, default=100, help="page requests before reading the worker's RSS")
    args = parser.parse_args(argv)
    if args.smoke:
        args.starts, args.imports, args.requests = 1, 1, 8
    out = Path(args.json) if args.json else (None if args.smoke else RESULTS)
    config = harness.model_config(args.model_config)
    results = {
        "smoke": args.smoke,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "profiles": measure(config, starts=args.starts, imports=args.imports, requests=args.requests),
    }
    results["targets"] = judge(results["profiles"])
    print(f"footprint: today's gateway (full profile, TensorFlow loaded) and the thin one, one run ({args.starts} "
          f"start(s), {args.requests} requests, 1 worker)")  # fmt: skip
    print(table({**results["profiles"], "targets": results["targets"]}))
    for name, profile in results["profiles"].items():
        errors = profile["worker"]["requests"]["errors"]
        if errors:
            print(f"{name}: {errors} requests failed: {profile['worker']['requests']['error_kinds']}")
    if args.smoke:
        print("(smoke run: too few starts and requests for the figures to mean much)")
    harness.write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
