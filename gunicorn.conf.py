"""gunicorn settings for the gateway: threaded workers; each worker opens its own backend after the fork."""

import os

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("GATEWAY_WORKERS", "1"))
threads = int(os.environ.get("GATEWAY_THREADS", "8"))
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", "60"))
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GATEWAY_MAX_REQUESTS", "2000"))
max_requests_jitter = max_requests // 10
preload_app = False  # the app (and its backend) is built in each worker, after the fork
# Request line and header limits (gunicorn answers 414 / 431 before the app sees the request);
# tests/contract/test_security.py holds them to these values or lower.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = "-"
errorlog = "-"


# MB of freed memory each malloc arena of a worker keeps for the next request (app/memory.py): without it every
# request pays page faults for the megabytes it allocates; 0 leaves glibc's defaults.
KEEP_FREED_MB = int(os.environ.get("GATEWAY_KEEP_FREED_MB", "64"))


def post_fork(server, worker):
    """In each worker, before it loads the app: keep freed memory for reuse (glibc's malloc settings)."""
    from app.memory import keep_freed_memory

    keep_freed_memory(KEEP_FREED_MB)


def post_worker_init(worker):
    """Open the backend as the worker boots and check the servables against the pipeline file: a misfit
    stops the gateway here, with the reason in the log, instead of failing every request later."""
    serving = getattr(worker.wsgi, "extensions", {}).get("serving")
    if serving is not None:
        serving.start()


def child_exit(server, worker):
    """In multi-process metrics mode, drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
