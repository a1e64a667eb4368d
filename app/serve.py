"""`python -m app.serve`: the gateway under gunicorn, taking the arguments KServe appends to a transformer container.

KServe starts a custom transformer's container with its own arguments added to those the manifest gives
(``--model_name <InferenceService> --predictor_host <predictor>.<namespace> --http_port 8080``, and ``--workers N``
where containerConcurrency is set). They become the gateway's settings, then gunicorn takes over the process:

    --http_port P        GATEWAY_BIND=0.0.0.0:P (the port KServe's Service sends traffic to)
    --workers N          GATEWAY_WORKERS=N
    --predictor_host H   GATEWAY_BACKEND=grpc, GATEWAY_SERVING_TARGET=H:80. The gateway calls TF Serving over
                         gRPC, not REST: H is the predictor's Service, whose port 80 leads to the predictor's first
                         declared container port, which deploy/kserve/inference-service.yaml declares as TF
                         Serving's gRPC port (named h2c, so that the Service speaks HTTP/2). A port in H is kept.
                         GATEWAY_SERVING_TARGET or GATEWAY_BACKEND set in the environment win.
    --model_name M       the InferenceService's name, logged. The gateway's routes name the pipeline's servables
                         (/api/v1/..., /v1/models/<servable>), not the InferenceService.

Any other argument is reported and ignored, so that a newer KServe adding one does not stop the pod. Without
arguments this is the image's gunicorn command, plus the one chore the Kubernetes manifests did in a shell: the
Prometheus multi-process folder is emptied first (prometheus-client requires it to start empty).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from app.config import ENV_PREFIX, PROJECT_ROOT

PREDICTOR_PORT = 80  # what KServe's predictor Service listens on (constants.CommonDefaultHttpPort)


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(prog="python -m app.serve", description=__doc__.splitlines()[0])
    arguments.add_argument("--model_name", help="the InferenceService's name (logged)")
    arguments.add_argument("--predictor_host", help="host[:port] of TF Serving's gRPC API (port 80 if none)")
    arguments.add_argument("--http_port", type=int, help="the port to serve HTTP on, on every address")
    arguments.add_argument("--workers", type=int, help="gunicorn worker processes")
    return arguments


def gateway_environment(options: argparse.Namespace, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment gunicorn runs with: ``environ`` plus the GATEWAY_* settings the options stand for."""
    env = dict(environ)
    if options.http_port is not None:
        if not 0 < options.http_port < 65536:
            raise SystemExit(f"--http_port {options.http_port} is not a TCP port")
        env[f"{ENV_PREFIX}BIND"] = f"0.0.0.0:{options.http_port}"
    if options.workers is not None:
        if options.workers < 1:
            raise SystemExit(f"--workers {options.workers} must be at least 1")
        env[f"{ENV_PREFIX}WORKERS"] = str(options.workers)
    if options.predictor_host:
        host = options.predictor_host.strip().removeprefix("http://").removeprefix("grpc://").rstrip("/")
        target = host if _has_port(host) else f"{host}:{PREDICTOR_PORT}"
        env.setdefault(f"{ENV_PREFIX}SERVING_TARGET", target)
        env.setdefault(f"{ENV_PREFIX}BACKEND", "grpc")
    return env


def _has_port(host: str) -> bool:
    name, colon, port = host.rpartition(":")
    return bool(colon) and port.isdigit() and not name.endswith(":")  # "[::1]:80" has one, "::1" has none


def clear_metrics_folder(environ: Mapping[str, str]) -> None:
    folder = environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder and Path(folder).is_dir():
        for stale in Path(folder).glob("*.db"):
            stale.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> None:
    options, unknown = parser().parse_known_args(argv)
    for argument in unknown:
        print(f"app.serve: ignoring the argument {argument!r}", file=sys.stderr)
    env = gateway_environment(options, os.environ)
    if options.model_name:
        target = env.get(f"{ENV_PREFIX}SERVING_TARGET", "the configured target")
        print(f"app.serve: transformer of InferenceService {options.model_name!r}, TF Serving at {target}",
              file=sys.stderr)  # fmt: skip
    clear_metrics_folder(env)
    command = [sys.executable, "-m", "gunicorn", "--config", str(PROJECT_ROOT / "gunicorn.conf.py"), "app:create_app()"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)  # gunicorn becomes the process: signals reach it directly


if __name__ == "__main__":
    main()
