"""Footprint of the gateway process: today's (TensorFlow loaded) and the thin one (no TensorFlow), in one run.

Two install profiles serve the same gateway with GATEWAY_BACKEND=grpc, side by side:

``full``  the project's virtualenv (requirements.txt: TensorFlow and all) running the gateway as it was before
          the thin client: every worker imports the official tensorflow-serving-api stubs, and so TensorFlow.
``thin``  a virtualenv with requirements-gateway.txt alone, built once per content of that file and cached
          under ~/.cache/portrait-gateway/, running ``app:create_app()``.

Both call the project's model server (app.model_server, in this process) over the demo
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

Targets, for the thin profile: RSS per worker <= 120 MB, /healthz <= 2 s after start, installed <= 350 MB
(MB = 2**20 bytes, as in the other benchmarks). The installed target was 300 MB until ``pull-models`` joined
the thin image (botocore, google-cloud-storage and their crypto, about 55 MB): one image is both the gateway
and its init container that pulls the models, as KServe's storage initializer is.

    .venv/bin/python -m bench.footprint                            # writes bench/results/footprint.json
    .venv/bin/python -m bench.footprint --smoke --json /tmp/f.json # few requests, one start: the script works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.support import harness
from tests.support.thin_gateway import (
    GATEWAY_REQUIREMENTS,
    Started,
    dockerfile_app_files,
    gateway,
    gateway_env,
    gateway_venv,
    installed_size,
    rss_bytes,
    site_packages,
    tensorflow_libraries,
    worker_pids,
)

REPO = Path(__file__).resolve().parents[1]

RESULTS = REPO / "bench" / "results" / "footprint.json"
FULL_REQUIREMENTS = REPO / "requirements.txt"
MB = harness.MB
# python:3.11-slim-bookworm (amd64) as `docker images` lists it, uncompressed: Docker's figure, not measured here.
BASE_IMAGE_MB = 125.0
# installed_mb: 300 before pull-models' object-store clients (about 55 MB) came into the thin image.
TARGETS = {"rss_per_worker_mb": 120.0, "healthz_s": 2.0, "installed_mb": 350.0}
PROFILES = ("full", "thin")
APP_SPECS = {"full": "bench.footprint:app_with_tensorflow_stubs()", "thin": "app:create_app()"}


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
    from app.model_server import ModelServer

    pythons = {"full": Path(sys.executable), "thin": gateway_venv()}
    request = page_request()
    results: dict[str, dict] = {name: {"python": str(python)} for name, python in pythons.items()}
    with (
        ModelServer(config, poll_interval=0) as double,
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
        total, by_distribution = installed_size(site_packages(pythons[name]), requirements)
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
