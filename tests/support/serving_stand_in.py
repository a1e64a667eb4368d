"""TF Serving's stand-in in the compose smoke test: the embedded runtime behind TF Serving's gRPC and REST ports.

The ``tensorflow/serving`` image cannot be pulled where no registry answers, so the smoke test
(scripts/compose_smoke.py) runs the ``tools`` image in its place with this module as the entrypoint.
It takes TF Serving's own command line, the one docker-compose.yaml gives the ``serving`` service, and
serves the same folders the same way:

* gRPC (``--port``): PredictionService and ModelService, the TF Serving protocol double of the tests
  (tests/tf_serving_double.py) over the runtime, with ``--grpc_channel_arguments`` as server options
  (``grpc.max_connection_age_ms`` makes clients re-resolve, so replicas added later are used);
* REST (``--rest_api_port``): the gateway app on the embedded backend, whose ``/v1/models/...`` is TF
  Serving's REST API over the same runtime (the healthcheck asks ``GET /v1/models/<name>``);
* ``--model_config_file`` with ``/models/...`` base paths, polled every ``--file_system_poll_wait_seconds``
  for new versions, warmup, labels for unavailable versions and load retries as the flags say.

Flags it does not act on (batching, monitoring, GPU memory) are listed once at start. SIGTERM (``docker
stop``) stops it as a model server should: new calls are refused, calls in flight are answered, then it
exits. The project's ``python -m app.model_server`` replaces it, same flags, when it lands.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from werkzeug.serving import make_server

from app import create_app
from app.extensions import serving
from tests.tf_serving_double import TFServingDouble

log = logging.getLogger("serving_stand_in")
MODELS_PREFIX = PurePosixPath("/models")  # where docker-compose.yaml mounts serving_models/
STOP_GRACE_S = 5.0


def _flag_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def parse_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """TF Serving's flags that the stand-in acts on, and the others as given (accepted, not acted on)."""
    parser = argparse.ArgumentParser(prog="serving_stand_in", allow_abbrev=False)
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--rest_api_port", type=int, default=0)
    parser.add_argument("--model_config_file", type=Path, required=True)
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    parser.add_argument("--enable_model_warmup", type=_flag_bool, default=True)
    parser.add_argument("--allow_version_labels_for_unavailable_models", type=_flag_bool, default=False)
    parser.add_argument("--max_num_load_retries", type=int, default=5)
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    parser.add_argument("--grpc_channel_arguments", default="")
    return parser.parse_known_args(argv)


def channel_arguments(text: str) -> list[tuple[str, Any]]:
    """``--grpc_channel_arguments``: comma-separated ``key=value`` pairs; integer values as integers."""
    pairs: list[tuple[str, Any]] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"serving_stand_in: --grpc_channel_arguments: {item!r} is not key=value")
        pairs.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    flags, ignored = parse_flags(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s [stand-in] %(message)s", level=logging.INFO, stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per healthcheck
    if ignored:
        log.info("TF Serving flags not acted on by the stand-in: %s", " ".join(ignored))
    app = create_app(
        {
            "backend": "local",
            "model_config": flags.model_config_file,
            "models_root": Path(MODELS_PREFIX),
            "poll_interval": flags.file_system_poll_wait_seconds,
            "warmup": flags.enable_model_warmup,
            "allow_labels_for_unavailable": flags.allow_version_labels_for_unavailable_models,
            "max_load_retries": flags.max_num_load_retries,
            "load_retry_interval": flags.load_retry_interval_micros / 1e6,
            "rate_limit": "",  # a model server does not rate-limit its clients
        }
    )
    backend = serving(app).backend
    runtime = getattr(backend, "inner", backend).runtime  # under the app's metrics wrapper
    grpc_server = TFServingDouble(
        runtime=runtime,
        host="0.0.0.0",
        port=flags.port,
        server_options=channel_arguments(flags.grpc_channel_arguments),
        name="stand-in",
    ).start()
    rest_server = make_server("0.0.0.0", flags.rest_api_port, app, threaded=True) if flags.rest_api_port else None
    if rest_server is not None:
        threading.Thread(target=rest_server.serve_forever, name="rest", daemon=True).start()
    log.info(
        "gRPC on :%d, REST on :%s, models from %s", flags.port, flags.rest_api_port or "-", flags.model_config_file
    )

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    # Python runs signal handlers in the main thread only, when it runs bytecode. A SIGTERM that the kernel hands
    # to one of gRPC's or TensorFlow's threads does not interrupt a wait without a timeout: it would hang until
    # docker stop's SIGKILL (seen in the smoke test: exit 137). So the main thread looks up every half second.
    while not stopping.wait(0.5):
        pass
    log.info("stopping: new calls refused, calls in flight answered for up to %.0f s", STOP_GRACE_S)
    grpc_server.stop(grace=STOP_GRACE_S)
    if rest_server is not None:
        rest_server.shutdown()
    serving(app).close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
