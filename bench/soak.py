"""Load soak of the gateway under gunicorn: many concurrent clients for a while; no errors, no memory creep.

16 clients post the astronaut portrait to POST /detect_face/image (the whole pipeline and the
result page) for 60 s against ``app:create_app()`` on the local backend, under the project's
gunicorn.conf.py. The resident memory of the gunicorn process tree (master and workers, from
/proc) is sampled every second; the first ``--warmup`` seconds are the warm-up (lazy loading,
caches, allocator pools), and the growth is the last samples' median over the median of the
samples at the end of the warm-up.

    .venv/bin/python -m bench.soak                     # 16 clients, 60 s, writes bench/results/soak.json
    .venv/bin/python -m bench.soak --smoke --json /tmp/soak.json   # 4 clients, a few seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support import harness

RESULTS = harness.REPO / "bench" / "results" / "soak.json"
TARGETS = {"errors": ("<=", 0), "rss_growth_after_warmup": ("<", 0.10)}
WINDOW = 5  # samples (seconds) whose median is taken at each end


def soak(config: Path, *, clients: int, duration: float, warmup: float, megapixels: float) -> dict:
    body, content_type = harness.multipart(
        {"k": "5"}, {"image_file": ("portrait.jpg", harness.astronaut_jpeg(megapixels), "image/jpeg")}
    )
    request = harness.Request("POST", "/detect_face/image", body, {"Content-Type": content_type, "Accept": "text/html"})

    def check(reply: harness.Reply) -> str | None:
        return None if b"data-anime" in reply.body else "page without the anime image"

    env = {**harness.BENCH_ENV, "GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_POLL_INTERVAL": "0"}
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as work,
        harness.gunicorn("gateway", "app:create_app()", env, Path(work)) as server,
    ):
        samples: list[tuple[float, int]] = []
        started = time.perf_counter()

        def sample() -> None:
            samples.append((time.perf_counter() - started, harness.tree_rss(server.pid)))

        sample()
        harness.log(f"soak: {clients} clients for {duration:g} s (warm-up {warmup:g} s) ...")
        outcome = harness.drive(
            server.port, lambda _c, _n: request, clients, duration=duration, check=check, on_tick=sample
        )
        sample()
        alive = server.process.poll() is None
        log_tail = server.log_tail(2000)
    warm = [rss for t, rss in samples if t <= warmup][-WINDOW:] or [samples[0][1]]
    late = [rss for t, rss in samples if t > warmup][-WINDOW:] or [samples[-1][1]]
    rss_warm, rss_end = statistics.median(warm), statistics.median(late)
    after = [rss for t, rss in samples if t > warmup]
    return {
        "clients": clients,
        "duration_s": duration,
        "warmup_s": warmup,
        "photo_megapixels": megapixels,
        "cpus": os.cpu_count(),
        "workers": int(os.environ.get("GATEWAY_WORKERS", "1")),
        "threads": int(os.environ.get("GATEWAY_THREADS", "8")),
        "load": outcome.summary(),
        "server_alive_at_end": alive,
        "rss_mb": {
            "start": round(samples[0][1] / harness.MB, 1),
            "after_warmup": round(rss_warm / harness.MB, 1),
            "end": round(rss_end / harness.MB, 1),
            "max_after_warmup": round(max(after, default=rss_end) / harness.MB, 1),
        },
        "rss_growth_after_warmup": round((rss_end - rss_warm) / rss_warm, 4) if rss_warm else None,
        "rss_samples_mb": [[round(t, 1), round(rss / harness.MB, 1)] for t, rss in samples],
        "server_log_tail": log_tail if outcome.errors else "",
    }


def judge(results: dict) -> dict:
    values = {"errors": results["load"]["errors"], "rss_growth_after_warmup": results["rss_growth_after_warmup"]}
    judged = {}
    for name, (op, limit) in TARGETS.items():
        value = values[name]
        met = value is not None and (value <= limit if op == "<=" else value < limit)
        judged[name] = {"value": value, "target": f"{op} {limit}", "met": met}
    return judged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="4 clients, a few seconds: checks that the script works")
    parser.add_argument("--model-config", help="serving_models.config to serve (default: the repository's)")
    parser.add_argument("--json", default=None, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds at the start that are warm-up")
    parser.add_argument("--megapixels", type=float, default=1.0, help="size of the portrait sent")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.duration, args.warmup, args.megapixels = 4, 8.0, 3.0, 0.25
    out = Path(args.json) if args.json else (None if args.smoke else RESULTS)
    results = soak(
        harness.model_config(args.model_config),
        clients=args.clients,
        duration=args.duration,
        warmup=args.warmup,
        megapixels=args.megapixels,
    )
    results["smoke"] = args.smoke
    results["targets"] = judge(results)
    load, rss = results["load"], results["rss_mb"]
    print(
        f"soak: {args.clients} clients, {load['seconds']:.0f} s: {load['ok']} ok, {load['errors']} errors "
        f"{load['error_kinds'] or ''}, {load['throughput_rps']:.2f} req/s, p50 {load['p50_ms']:.0f} ms, "
        f"p99 {load['p99_ms']:.0f} ms"
    )
    print(
        f"rss: start {rss['start']} MB, after warm-up {rss['after_warmup']} MB, end {rss['end']} MB "
        f"(growth {results['rss_growth_after_warmup']:+.1%}), max after warm-up {rss['max_after_warmup']} MB"
    )
    for name, t in results["targets"].items():
        print(f"  {name:<26} {t['value']!s:>8}  target {t['target']:<6} {'met' if t['met'] else 'NOT MET'}")
    harness.write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
