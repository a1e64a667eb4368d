"""``python -m app.model_server``: TF Serving's gRPC and REST APIs over the embedded runtime, with its flags.

    python -m app.model_server --port=8500 --rest_api_port=8501 \\
        --model_name=half_plus_two --model_base_path=/srv/models/half_plus_two
    python -m app.model_server --port=8500 --model_config_file=/srv/models/models.config \\
        --model_config_file_poll_wait_seconds=60

The flags are ``tensorflow_model_server``'s (``--help`` lists them, and what each does here).
SIGTERM or SIGINT (Ctrl-C) stops it as a draining server stops: both ports refuse new calls at once,
calls in flight are answered for up to DRAIN_SECONDS, then the models are unloaded and it exits 0.
A command line it cannot run with is one line on stderr, the usage, and exit status 2; a server that
cannot start (a model that will not load, a port in use) is one line and exit status 1.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence

from app import logs
from app.model_server.flags import PROGRAM, FlagError, HelpRequested, check, parse, usage

DRAIN_SECONDS = 8.0  # below Docker's 10 s between SIGTERM and SIGKILL
COMPATIBLE_WITH = "2.20.0"  # the tensorflow_model_server release whose APIs, flags and answers this follows

log = logging.getLogger("app.model_server")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        flags = parse(arguments)
        if flags.version:  # answered before anything is checked, as tensorflow_model_server does
            return _print_version()
        warnings = check(flags)
    except HelpRequested:
        sys.stdout.write(usage())
        return 0
    except FlagError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        sys.stderr.write(usage())
        return 2
    logs.configure("INFO")
    for warning in warnings:
        log.warning("%s", warning)

    loaded, stopping = threading.Event(), threading.Event()

    def stop_on(signum: int, _frame: object) -> None:
        if not loaded.is_set() and not stopping.is_set():
            stopping.set()
            raise StartInterrupted(signum)  # TensorFlow or the models are loading: give up, nothing is served yet
        if stopping.is_set():
            log.warning("already stopping (signal %d)", signum)
        stopping.set()  # serving (or opening the ports): drained below

    signal.signal(signal.SIGTERM, stop_on)
    signal.signal(signal.SIGINT, stop_on)
    try:
        from app.serving.tensorflow_import import import_tensorflow

        import_tensorflow("INFO")
        from app.model_server.server import Server, StartError

        try:
            server = Server(flags).load()
            loaded.set()
            server.serve()
        except StartError as exc:
            print(f"Failed to start server. Error: {exc}", file=sys.stderr)
            return 1
    except StartInterrupted as exc:
        print(f"{PROGRAM}: stopped by signal {exc.signum} while loading", file=sys.stderr)
        return 0
    while not stopping.wait(1.0):  # a timed wait: the signal handler runs between two
        pass
    log.info("stopping: the ports take no new calls; calls in flight have %g s to finish", DRAIN_SECONDS)
    server.stop(DRAIN_SECONDS)
    log.info("stopped")
    return 0


class StartInterrupted(BaseException):
    """SIGTERM or SIGINT came while loading. A BaseException, as KeyboardInterrupt is: no ``except Exception`` on the
    way (a warmup record's runner, say) takes it for a failure of its own."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _print_version() -> int:
    from app.serving.tensorflow_import import import_tensorflow

    tf = import_tensorflow("ERROR")
    print(f"TensorFlow ModelServer: {COMPATIBLE_WITH}-compatible (portrait gateway's app.model_server)")
    print(f"TensorFlow Library: {tf.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
