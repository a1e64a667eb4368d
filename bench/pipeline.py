"""End-to-end benchmark of the portrait pipeline: the gateway against the tutorial-style baseline, over HTTP.

Both apps run under gunicorn with the project's gunicorn.conf.py (same workers and threads),
on two loopback ports, over the same SavedModels and the same ``ModelRuntime``:

* ``gateway``  ``app:create_app()`` on the local backend, POST /detect_face/image -> the result page;
* ``baseline`` ``bench/baseline_app.py``, the tutorial's way (upload saved to disk, full-resolution
  ``cv2.imread``, stages one after another, a fresh PredictRequest per call, ``float_val`` parsing),
  POST /detect_face/image -> a page with the same images (photo, face crop, anime, k=5 matches).

Each is driven with the same photos (``skimage.data.astronaut()`` upscaled to 1 MP and 12 MP
JPEGs) at concurrency 1, 4 and 8, a bounded number of requests each; the two apps take turns
(ABBA order) so that noise from other work on the machine falls on both alike. It reports
p50/p95/p99, throughput and errors, the ratios the targets are about, and the gateway's
overhead: end-to-end time minus the critical path of model time, ``detect + max(encode +
search, translate)``, from the per-call model timings (``model-*``) in ``Server-Timing``.

    .venv/bin/python -m bench.pipeline                  # full run, writes bench/results/pipeline.json
    .venv/bin/python -m bench.pipeline --smoke --json /tmp/p.json   # tiny: checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from tests.support import harness

REPO = harness.REPO
RESULTS = REPO / "bench" / "results" / "pipeline.json"
K = 5
TARGETS = {
    "p50_12mp_c1_gateway_over_baseline": ("<=", 0.5),
    "throughput_c8_12mp_gateway_over_baseline": (">=", 2.0),
    "throughput_c8_1mp_gateway_over_baseline": (">=", 2.0),
    "errors_c8_gateway": ("<=", 0),
    "overhead_share_1mp": ("<=", 0.15),
    "p50_12mp_over_1mp_gateway": ("<=", 1.5),
}
APPS = ("gateway", "baseline")


def _request_for(app: str, bodies: dict[int, tuple[bytes, str]]):
    """Client ``c`` always sends ``portrait-<c>.jpg``: the baseline saves by that name, so clients never collide."""

    def make(client: int, _n: int) -> harness.Request:
        body, content_type = bodies[client]
        headers = {"Content-Type": content_type, "Accept": "text/html"}
        return harness.Request("POST", "/detect_face/image", body, headers)

    return make


def _check(app: str):
    marker = b"data-anime" if app == "gateway" else b'alt="anime"'

    def check(reply: harness.Reply) -> str | None:
        if marker not in reply.body or reply.body.count(b"data:image/") < 3:
            return "page without the result images"
        return None

    return check


def gateway_breakdown(replies: list[harness.Reply]) -> dict:
    """Median per-stage Server-Timing of the gateway's answers, and the overhead beside the model time."""
    if not replies:
        return {}
    timings = [harness.parse_server_timing(r.headers.get("Server-Timing", "")) for r in replies]
    stages = sorted({name for t in timings for name in t})
    end_to_end = [r.seconds * 1000 for r in replies]
    model = [harness.model_critical_path(t) for t in timings]
    shares = [(e - m) / e for e, m in zip(end_to_end, model, strict=True)]
    return {
        "stages_median_ms": {s: round(statistics.median(t.get(s, 0.0) for t in timings), 2) for s in stages},
        "end_to_end_median_ms": round(statistics.median(end_to_end), 2),
        "model_critical_path_median_ms": round(statistics.median(model), 2),
        "outside_pipeline_median_ms": round(
            statistics.median(e - t.get("total", 0.0) for e, t in zip(end_to_end, timings, strict=True)), 2
        ),
        "overhead_median_ms": round(statistics.median(e - m for e, m in zip(end_to_end, model, strict=True)), 2),
        "overhead_share_median": round(statistics.median(shares), 4),
    }


def run(args: argparse.Namespace) -> dict:
    photos = {f"{mp:g}MP": harness.astronaut_jpeg(mp) for mp in args.megapixels}
    small, large = next(iter(photos)), list(photos)[-1]
    config = harness.model_config(args.model_config)
    results: dict = {"photos": {}, "runs": {}, "gateway_breakdown": {}}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as work:
        work = Path(work)
        uploads = work / "uploads"
        uploads.mkdir()
        common_env = harness.BENCH_ENV
        gateway_env = {**common_env, "GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_POLL_INTERVAL": "0"}
        baseline_env = {**common_env, "BASELINE_MODEL_CONFIG": str(config), "BASELINE_UPLOAD_DIR": str(uploads)}
        harness.log("starting the gateway and the baseline under gunicorn ...")
        with (
            harness.gunicorn("gateway", "app:create_app()", gateway_env, work) as gateway,
            harness.gunicorn("baseline", "bench.baseline_app:create_app()", baseline_env, work) as baseline,
        ):
            servers = {"gateway": gateway, "baseline": baseline}
            results["settings"] = {
                "cpus": os.cpu_count(),
                "workers": int(os.environ.get("GATEWAY_WORKERS", "1")),
                "threads": int(os.environ.get("GATEWAY_THREADS", "8")),
                "session_threads": os.environ.get("GATEWAY_SESSION_THREADS", "0"),
                "requests": {str(c): args.requests(c) for c in args.concurrency},
                "k": K,
            }
            turn = 0
            for label, jpeg in photos.items():
                bodies = {
                    c: harness.multipart({"k": str(K)}, {"image_file": (f"portrait-{c}.jpg", jpeg, "image/jpeg")})
                    for c in range(max(args.concurrency))
                }
                results["photos"][label] = {"bytes": len(jpeg), "pixels": _pixels(jpeg)}
                for app in APPS:  # warm-up: first calls pay for lazy loading and caches
                    warm = harness.drive(servers[app].port, _request_for(app, bodies), 1, count=args.warmup)
                    if warm.errors:
                        raise RuntimeError(f"{app} fails on {label}: {dict(warm.errors)}\n{servers[app].log_tail()}")
                for concurrency in args.concurrency:
                    order = APPS if turn % 2 == 0 else APPS[::-1]
                    turn += 1
                    for app in order:
                        harness.log(f"{label} c={concurrency} {app} ...")
                        outcome = harness.drive(
                            servers[app].port,
                            _request_for(app, bodies),
                            concurrency,
                            count=args.requests(concurrency),
                            keep_replies=app == "gateway",
                            check=_check(app),
                        )
                        results["runs"].setdefault(label, {}).setdefault(str(concurrency), {})[app] = outcome.summary()
                        if app == "gateway":
                            ok = [r for r in outcome.replies if r.status == 200]
                            results["gateway_breakdown"].setdefault(label, {})[str(concurrency)] = gateway_breakdown(ok)
    results["ratios"] = _ratios(results, small, large, max(args.concurrency))
    results["targets"] = _judge(results["ratios"])
    return results


def _pixels(jpeg: bytes) -> list[int]:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        return list(image.size)


def _ratios(results: dict, small: str, large: str, top: int) -> dict:
    runs = results["runs"]

    def get(label: str, c: int, app: str, key: str) -> float:
        return runs[label][str(c)][app][key]

    ratios = {}
    for label in runs:
        for c in runs[label]:
            ratios[f"p50_{label}_c{c}_gateway_over_baseline"] = round(
                get(label, int(c), "gateway", "p50_ms") / get(label, int(c), "baseline", "p50_ms"), 3
            )
            ratios[f"throughput_{label}_c{c}_gateway_over_baseline"] = round(
                get(label, int(c), "gateway", "throughput_rps") / get(label, int(c), "baseline", "throughput_rps"), 3
            )
    # The targets' figures, named for the full run's photos (the smoke run's are smaller) and concurrency.
    ratios["p50_12mp_c1_gateway_over_baseline"] = ratios[f"p50_{large}_c1_gateway_over_baseline"]
    ratios["throughput_c8_12mp_gateway_over_baseline"] = ratios[f"throughput_{large}_c{top}_gateway_over_baseline"]
    ratios["throughput_c8_1mp_gateway_over_baseline"] = ratios[f"throughput_{small}_c{top}_gateway_over_baseline"]
    ratios["errors_c8_gateway"] = sum(get(label, top, "gateway", "errors") for label in runs)
    ratios["overhead_share_1mp"] = results["gateway_breakdown"][small]["1"]["overhead_share_median"]
    ratios["p50_12mp_over_1mp_gateway"] = round(
        get(large, 1, "gateway", "p50_ms") / get(small, 1, "gateway", "p50_ms"), 3
    )
    return ratios


def _judge(ratios: dict) -> dict:
    judged = {}
    for name, (op, limit) in TARGETS.items():
        value = ratios[name]
        judged[name] = {
            "value": value,
            "target": f"{op} {limit}",
            "met": value <= limit if op == "<=" else value >= limit,
        }
    return judged


def report(results: dict) -> str:
    head = ("photo", "c", "app", "n", "err", "p50 ms", "p95 ms", "p99 ms", "req/s")
    lines = [" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 2, 9, 4, 4, 8, 8, 8, 7), strict=True))]
    for label, by_c in results["runs"].items():
        for c, by_app in by_c.items():
            for app, s in by_app.items():
                lines.append(
                    f"{label:>6} {c:>2} {app:>9} {s['requests']:>4} {s['errors']:>4} {s['p50_ms']:>8.1f} "
                    f"{s['p95_ms']:>8.1f} {s['p99_ms']:>8.1f} {s['throughput_rps']:>7.2f}"
                )
            lines.append(
                f"{'':>6} {'':>2} {'ratio':>9} p50 gateway/baseline "
                f"{results['ratios'][f'p50_{label}_c{c}_gateway_over_baseline']:.2f}, throughput "
                f"{results['ratios'][f'throughput_{label}_c{c}_gateway_over_baseline']:.2f}"
            )
    lines.append("gateway Server-Timing medians (ms) at concurrency 1:")
    for label, by_c in results["gateway_breakdown"].items():
        lines.append(f"  {label}: {json.dumps(by_c.get('1', {}))}")
    lines.append("targets:")
    for name, t in results["targets"].items():
        lines.append(f"  {name:<40} {t['value']!s:>8}  target {t['target']:<7} {'met' if t['met'] else 'NOT MET'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny photos, few requests: checks that the script works")
    parser.add_argument("--model-config", help="serving_models.config to serve (default: the repository's)")
    parser.add_argument("--json", default=None, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--per-client", type=int, default=6, help="requests per client at each concurrency")
    parser.add_argument("--min-requests", type=int, default=20, help="at least this many requests per run")
    args = parser.parse_args(argv)
    if args.smoke:
        args.megapixels, args.concurrency, args.warmup = (0.25, 1.0), (1, 2), 1
        args.requests = lambda c: 2 * c
        out = Path(args.json) if args.json else None
    else:
        args.megapixels, args.concurrency, args.warmup = (1.0, 12.0), (1, 4, 8), 3
        args.requests = lambda c: max(args.min_requests, args.per_client * c)
        out = Path(args.json) if args.json else RESULTS
    results = run(args)
    results["smoke"] = args.smoke
    print(report(results))
    harness.write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
