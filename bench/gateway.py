"""What the gateway itself costs per request: servables with the demo's signatures that answer at once.

On a GPU deployment the models take a millisecond or two, and the gateway's own work (HTTP, multipart, JPEG
decoding, crops, the wire codec, JSON or the page) is most of every request. This benchmark measures that part
alone. It exports its own servables (tiny ``tf.Module``s with the demo's servable names, tensor names, shapes
and dtypes, so the repository's pipeline.toml fits them) into a temporary folder:

``face_detection``          constant boxes, scores and keypoints: version 2 (the latest) finds one face (the
                            astronaut's, where the demo detector finds it), version 1 six faces (one per tile of
                            the six-face photo below; a request pins it with ``detect_version=1``);
``twingan_latent_encoder``  the mean colour of each crop, tiled to 128 values and normalised;
``latent_search_model``     the demo's exact search (app.modelzoo.search) over 64 random latents;
``ugatit_selfie2anime``     the identity.

and serves them to gateways under gunicorn (the project's gunicorn.conf.py, ``GATEWAY_WORKERS`` workers, 2 by
default, as the issue measured on 2 cores) on both backends: ``local`` (each worker loads them) and ``grpc``
(one model server, ``python -m bench.gateway serve-models``, a process of its own). The same run measures the
gateway of another revision (``--before``, default the revision this work started from), extracted with
``git archive`` and served the same way, so the before/after figures share the machine's load.

Each measured: ``api`` (POST /api/v1/search, multipart, k=5) and ``page`` (POST /detect_face/image, the HTML
result page), 1 MP and 12 MP JPEGs of skimage's astronaut, 1 client and 8 (keep-alive connections), each for
``--seconds``, the revisions taking turns in ``--rounds`` slices. Besides latency and throughput at the client,
each measurement gives the CPU time gunicorn's processes spent per request: on a shared machine, the steadiest
figure. Then, this revision only, the six-face photo (the astronaut tiled 3 x 2, 1 MP) on the API: the default
answer (the best face) against ``faces=all``.

Targets (issue 27; 2 cores): 1 MP API p50 at 1 client <= 8 ms; 1 MP API throughput at 8 clients >= 2x the
``--before`` revision's (the issue measured 157 req/s); ``faces=all`` on six faces <= 1.8x the one-face answer
(p50 and CPU per request). The machine is shared: figures move with its load; ratios measured side by side less.

    .venv/bin/python -m bench.gateway                        # writes bench/results/gateway.json
    .venv/bin/python -m bench.gateway --smoke --json /tmp/g.json   # tiny: the script works
    .venv/bin/python -m bench.gateway --profile api          # pyinstrument over in-process requests (or: page)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support import harness

REPO = harness.REPO
RESULTS = REPO / "bench" / "results" / "gateway.json"
# main when this work started: the gateway ISSUE 27 measured (13.6 ms p50, 157 req/s).
BEFORE = "5cf45a9"
K = 5
ONE_FACE_VERSION, SIX_FACE_VERSION = 2, 1  # unpinned requests get the latest: one face
MAX_DETECTIONS = 50  # the demo detector's padded output length
GALLERY_SIZE = 64
LATENT_SIZE = 128
# Where the demo detector finds the astronaut (skimage.data.astronaut()), normalised: box and six keypoints.
ASTRONAUT_BOX = (0.160, 0.350, 0.344, 0.534)
ASTRONAUT_KEYPOINTS = ((0.200, 0.398), (0.214, 0.486), (0.245, 0.435), (0.286, 0.429), (0.217, 0.347), (0.245, 0.532))
SIX_FACE_GRID = (2, 3)  # rows, columns of astronaut tiles
TARGETS = {
    "p50_1mp_api_c1_ms": ("<=", 8.0),
    "throughput_1mp_api_c8_after_over_before": (">=", 2.0),
    "every_face_over_one_face_p50": ("<=", 1.8),
    "every_face_over_one_face_cpu": ("<=", 1.8),
    "errors": ("<=", 0),
}
SERVABLES = ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime")


# -- the instant servables ------------------------------------------------------------------------------


def six_face_boxes() -> tuple[list[tuple[float, ...]], list[tuple[tuple[float, float], ...]]]:
    """The astronaut's box and keypoints in each tile of the six-face photo, best (top left) first."""
    rows, columns = SIX_FACE_GRID
    boxes, points = [], []
    for row in range(rows):
        for column in range(columns):
            ymin, xmin, ymax, xmax = ASTRONAUT_BOX
            boxes.append(
                ((row + ymin) / rows, (column + xmin) / columns, (row + ymax) / rows, (column + xmax) / columns)
            )
            points.append(tuple(((row + y) / rows, (column + x) / columns) for y, x in ASTRONAUT_KEYPOINTS))
    return boxes, points


def export_instant_servables(root: Path) -> Path:
    """The four servables (demo signatures, answers at once) under ``root/serving_models``, with a
    serving_models.config and the repository's pipeline.toml beside it; returns the config."""
    import numpy as np
    import tensorflow as tf

    from app.modelzoo.export import save_servable
    from app.modelzoo.search import export_search_model

    models = root / "serving_models"

    def detector(boxes: list, points: list) -> tf.Module:
        count = len(boxes)
        padded_boxes = np.zeros((1, MAX_DETECTIONS, 4), np.float32)
        padded_boxes[0, :count] = boxes
        padded_points = np.zeros((1, MAX_DETECTIONS, len(ASTRONAUT_KEYPOINTS), 2), np.float32)
        padded_points[0, :count] = points
        scores = np.zeros((1, MAX_DETECTIONS), np.float32)
        scores[0, :count] = np.linspace(0.95, 0.9, count)
        classes = (scores > 0).astype(np.float32)

        class InstantDetector(tf.Module):
            @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_images")])
            def detect(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
                del input_images  # answers at once: the same faces whatever the photo
                return {
                    "boxes": tf.constant(padded_boxes),
                    "scores": tf.constant(scores),
                    "classes": tf.constant(classes),
                    "num_detections": tf.constant([float(count)], tf.float32),
                    "keypoints": tf.constant(padded_points),
                }

        return InstantDetector()

    one = detector([ASTRONAUT_BOX], [ASTRONAUT_KEYPOINTS])
    save_servable(one, models / "face_detection" / str(ONE_FACE_VERSION), {"serving_default": one.detect})
    six = detector(*six_face_boxes())
    save_servable(six, models / "face_detection" / str(SIX_FACE_VERSION), {"serving_default": six.detect})

    class InstantEncoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 150, 150, 3], tf.uint8, name="input_images")])
        def encode(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
            colour = tf.reduce_mean(tf.cast(input_images, tf.float32), axis=[1, 2])
            codes = tf.tile(colour, [1, -(-LATENT_SIZE // 3)])[:, :LATENT_SIZE] + tf.range(
                LATENT_SIZE, dtype=tf.float32
            )
            return {"output": tf.math.l2_normalize(codes, axis=1)}

    encoder = InstantEncoder()
    save_servable(encoder, models / "twingan_latent_encoder" / "1", {"serving_default": encoder.encode})

    class InstantTranslator(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 256, 256, 3], tf.float32, name="input_images")])
        def translate(self, input_images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"output_images": tf.identity(input_images)}

    translator = InstantTranslator()
    save_servable(translator, models / "ugatit_selfie2anime" / "1", {"serving_default": translator.translate})

    latents = np.random.default_rng(27).normal(size=(GALLERY_SIZE, LATENT_SIZE)).astype(np.float32)
    latents /= np.linalg.norm(latents, axis=1, keepdims=True)
    names = [f"bench/face_{i:03d}.png" for i in range(GALLERY_SIZE)]
    export_search_model(models / "latent_search_model" / "1", latents, names)

    blocks = []
    for name in SERVABLES:
        policy = "    model_version_policy { all {} }\n" if name == "face_detection" else ""
        blocks.append(
            f'  config {{\n    name: "{name}"\n    base_path: "/models/{name}"\n    model_platform: "tensorflow"\n'
            f"{policy}  }}"
        )
    config = root / "serving_models.config"
    config.write_text("model_config_list {\n" + "\n".join(blocks) + "\n}\n", encoding="utf-8")
    shutil.copy(REPO / "pipeline.toml", root / "pipeline.toml")
    return config


# -- photos --------------------------------------------------------------------------------------------


def six_face_jpeg(megapixels: float = 1.0) -> bytes:
    """The astronaut tiled 3 x 2 (six faces, where the six-face detector version says), about ``megapixels``."""
    import numpy as np
    import skimage.data
    from PIL import Image

    rows, columns = SIX_FACE_GRID
    side = round(math.sqrt(megapixels * 1e6 / (rows * columns)))
    tile = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.Resampling.BICUBIC))
    mosaic = np.concatenate([np.concatenate([tile] * columns, axis=1)] * rows, axis=0)
    out = io.BytesIO()
    Image.fromarray(mosaic).save(out, format="JPEG", quality=92)
    return out.getvalue()


# -- the revisions and servers --------------------------------------------------------------------------


def extract_revision(revision: str, into: Path) -> Path:
    """The repository's files at ``revision`` (``git archive``: the repository itself is left as it is)."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=REPO, capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--before {revision}: git archive failed: {archive.stderr.decode(errors='replace').strip()}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


@contextlib.contextmanager
def model_server(config: Path, work: Path) -> Iterator[str]:
    """``python -m bench.gateway serve-models`` in a process of its own; yields its address."""
    port = harness.free_port()
    log_path = work / f"model-server-{port}.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.gateway", "serve-models", str(config), str(port)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while b"serving on" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the model server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def serve_models(config: str, port: str) -> int:
    """The model server for the grpc runs (app.model_server over the instant servables) until SIGTERM."""
    from app.memory import keep_freed_memory
    from app.model_server import ModelServer

    # The model server stands in for TF Serving (C++, its own allocator): as cheap as it can be, so that what the
    # gateway costs is what is left of the machine.
    keep_freed_memory()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ModelServer(config, port=int(port), poll_interval=0, warmup=False) as server:
        print(f"serving on {server.address}", flush=True)
        stop.wait()
    return 0


# -- requests --------------------------------------------------------------------------------------------

ENDPOINTS = {"api": "/api/v1/search", "page": "/detect_face/image"}


def request_for(endpoint: str, photo: bytes, query: str = "") -> harness.Request:
    body, content_type = harness.multipart({"k": str(K)}, {"image_file": ("photo.jpg", photo, "image/jpeg")})
    accept = "application/json" if endpoint == "api" else "text/html"
    return harness.Request("POST", ENDPOINTS[endpoint] + query, body, {"Content-Type": content_type, "Accept": accept})


def _always(request: harness.Request):
    """Every client sends the same request (the same photo)."""
    return lambda _client, _n: request


def check_for(endpoint: str, faces: int = 1):
    def check(reply: harness.Reply) -> str | None:
        if endpoint == "api":
            found = reply.body.count(b'"thumbnail_url"')
            return None if found == K * faces else f"{found} matches, not {K * faces}"
        return None if b"data-anime" in reply.body else "a page without the anime image"

    return check


def breakdown(replies: list[harness.Reply]) -> dict[str, float]:
    """Median Server-Timing per stage (ms), and the client's median minus the pipeline's ``total``."""
    timings = [harness.parse_server_timing(r.headers.get("Server-Timing", "")) for r in replies if r.status == 200]
    if not timings:
        return {}
    stages = sorted({name for t in timings for name in t})
    found = {stage: round(statistics.median(t.get(stage, 0.0) for t in timings), 2) for stage in stages}
    outside = [r.seconds * 1000 - t.get("total", 0.0) for r, t in zip(replies, timings, strict=False)]
    found["outside_pipeline"] = round(statistics.median(outside), 2)
    return found


Variant = tuple[harness.Server, harness.Request, Callable[[harness.Reply], str | None]]


def compare(variants: dict[str, Variant], concurrency: int, args: argparse.Namespace) -> dict[str, dict]:
    """Each variant (a server and the request it gets) driven by ``concurrency`` clients for ``args.seconds``, in
    ``args.rounds`` slices that take turns (A B B A ...), so that the machine's load, which drifts, weighs on all
    alike. Per variant: latency and throughput at the client, Server-Timing medians, and the CPU time the gateway
    (gunicorn's master and workers) spent per request, a figure the load hardly moves."""
    pooled = {name: harness.RunResult(concurrency) for name in variants}
    cpu = dict.fromkeys(variants, 0.0)
    for turn in range(args.rounds):
        for name in list(variants) if turn % 2 == 0 else list(variants)[::-1]:
            server, request, check = variants[name]
            before = harness.tree_cpu_seconds(server.pid)
            result = harness.drive(
                server.port,
                _always(request),
                concurrency,
                count=args.max_requests,
                duration=args.seconds / args.rounds,
                keep_replies=True,
                check=check,
            )
            cpu[name] += harness.tree_cpu_seconds(server.pid) - before
            into = pooled[name]
            into.latencies += result.latencies
            into.errors.update(result.errors)
            into.replies += result.replies
            into.seconds += result.seconds
    found = {}
    for name, result in pooled.items():
        summary = result.summary()
        summary["cpu_ms_per_request"] = round(cpu[name] * 1000 / max(1, result.requests), 2)
        summary["server_timing_ms"] = breakdown(result.replies)
        found[name] = summary
    return found


# -- the run -----------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    photos = {f"{mp:g}MP": harness.astronaut_jpeg(mp) for mp in args.megapixels}
    six_faces = six_face_jpeg(args.megapixels[0])
    results: dict = {
        "settings": {
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "workers": int(os.environ.get("GATEWAY_WORKERS", "2")),
            "threads": int(os.environ.get("GATEWAY_THREADS", "8")),
            "seconds_per_variant": args.seconds,
            "rounds": args.rounds,
            "before": args.before,
            "k": K,
        },
        "photos": {label: len(jpeg) for label, jpeg in photos.items()} | {"six_faces": len(six_faces)},
        "runs": {},
        "rss_mb": {},
        "every_face": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as work:
        work = Path(work)
        harness.log("exporting the instant servables ...")
        config = export_instant_servables(work / "serving")
        roots = {"after": REPO}
        if args.before:
            roots["before"] = extract_revision(args.before, work / "before")
        for backend in args.backends:
            with contextlib.ExitStack() as stack:
                env = {
                    **harness.BENCH_ENV,
                    "GATEWAY_WORKERS": os.environ.get("GATEWAY_WORKERS", "2"),
                    "GATEWAY_MODEL_CONFIG": str(config),
                    "GATEWAY_POLL_INTERVAL": "0",
                    "GATEWAY_WARMUP": "0",
                    "GATEWAY_BACKEND": backend,
                }
                if backend == "grpc":
                    env["GATEWAY_SERVING_TARGET"] = stack.enter_context(model_server(config, work))
                harness.log(f"{backend}: starting {', '.join(roots)} under gunicorn ...")
                servers = {
                    name: stack.enter_context(
                        harness.gunicorn(f"{name}-{backend}", "app:create_app()", env, work, root=root)
                    )
                    for name, root in roots.items()
                }
                results["runs"][backend] = measure_revisions(servers, photos, args)
                # Resident memory after the runs (gunicorn's master and workers): what keeping freed memory costs.
                results["rss_mb"][backend] = {
                    name: round(harness.tree_rss(s.pid) / harness.MB, 1) for name, s in servers.items()
                }
                harness.log(f"{backend}: every face of six ...")
                results["every_face"][backend] = measure_every_face(servers["after"], six_faces, args)
    results["ratios"] = ratios(results)
    results["targets"] = judge(results["ratios"])
    return results


def measure_revisions(servers: dict[str, harness.Server], photos: dict[str, bytes], args: argparse.Namespace) -> dict:
    found: dict = {}
    for endpoint in args.endpoints:
        for label, photo in photos.items():
            request, check = request_for(endpoint, photo), check_for(endpoint)
            for name, server in servers.items():  # warm-up: lazy loading, caches, the first connections
                warm = harness.drive(server.port, _always(request), 2, count=args.warmup, check=check)
                if warm.errors:
                    raise RuntimeError(f"{name} fails on {endpoint} {label}: {dict(warm.errors)}\n{server.log_tail()}")
            for concurrency in args.concurrency:
                harness.log(f"  {endpoint} {label} c={concurrency} ...")
                variants = {name: (server, request, check) for name, server in servers.items()}
                found.setdefault(endpoint, {}).setdefault(label, {})[str(concurrency)] = compare(
                    variants, concurrency, args
                )
    return found


def measure_every_face(server: harness.Server, photo: bytes, args: argparse.Namespace) -> dict:
    """The six-face photo on the API: the best face (today's answer) against every face, taking turns."""
    pin = f"?detect_version={SIX_FACE_VERSION}"
    variants = {
        "one_face": (server, request_for("api", photo, pin), check_for("api", 1)),
        "every_face": (server, request_for("api", photo, pin + "&faces=all"), check_for("api", 6)),
    }
    for name, (_, request, check) in variants.items():
        warm = harness.drive(server.port, _always(request), 1, count=args.warmup, check=check)
        if warm.errors:
            raise RuntimeError(f"{name} fails: {dict(warm.errors)}")
    return {str(concurrency): compare(variants, concurrency, args) for concurrency in args.concurrency}


def ratios(results: dict) -> dict:
    found: dict = {}
    errors = 0
    for backend, by_endpoint in results["runs"].items():
        for endpoint, by_photo in by_endpoint.items():
            for label, by_c in by_photo.items():
                for c, by_rev in by_c.items():
                    errors += sum(s["errors"] for s in by_rev.values())
                    if "before" in by_rev:
                        key = f"{backend}_{endpoint}_{label}_c{c}"
                        found[f"p50_{key}_after_over_before"] = _ratio(
                            by_rev["after"]["p50_ms"], by_rev["before"]["p50_ms"]
                        )
                        found[f"throughput_{key}_after_over_before"] = _ratio(
                            by_rev["after"]["throughput_rps"], by_rev["before"]["throughput_rps"]
                        )
                        found[f"cpu_{key}_after_over_before"] = _ratio(
                            by_rev["after"]["cpu_ms_per_request"], by_rev["before"]["cpu_ms_per_request"]
                        )
    for backend, by_c in results["every_face"].items():
        for c, variants in by_c.items():
            errors += sum(s["errors"] for s in variants.values())
            found[f"every_face_over_one_face_p50_{backend}_c{c}"] = _ratio(
                variants["every_face"]["p50_ms"], variants["one_face"]["p50_ms"]
            )
            found[f"every_face_over_one_face_cpu_{backend}_c{c}"] = _ratio(
                variants["every_face"]["cpu_ms_per_request"], variants["one_face"]["cpu_ms_per_request"]
            )
    # The targets' figures: the worst backend's (each backend is a deployment of its own); None when not measured.
    api = {backend: by_endpoint["api"] for backend, by_endpoint in results["runs"].items() if "api" in by_endpoint}
    small = next(iter(next(iter(api.values())))) if api else None  # the smallest photo (1 MP in a full run)
    one_client = [api[b][small]["1"]["after"]["p50_ms"] for b in api if "1" in api[b][small]]
    found["p50_1mp_api_c1_ms"] = max(one_client) if one_client else None
    top = max((int(c) for b in api for c in api[b][small]), default=None)
    compared = [f"throughput_{b}_api_{small}_c{top}_after_over_before" for b in api]
    compared = [found[key] for key in compared if key in found]
    found["throughput_1mp_api_c8_after_over_before"] = min(compared) if compared else None
    for figure in ("p50", "cpu"):
        every = [
            v
            for key, v in found.items()
            if key.startswith(f"every_face_over_one_face_{figure}_") and key.endswith("_c1")
        ]
        found[f"every_face_over_one_face_{figure}"] = max(every) if every else None
    found["errors"] = errors
    return found


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.nan


def judge(found: dict) -> dict:
    judged = {}
    for name, (op, limit) in TARGETS.items():
        value = found.get(name)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        judged[name] = {"value": value, "target": f"{op} {limit}", "met": met}
    return judged


def _cell(before: dict | None, after: dict, key: str) -> str:
    """``before after ratio`` of one figure."""
    if before is None:
        return f"{'-':>7} {after[key]:>7.1f} {'-':>5}"
    ratio = after[key] / before[key] if before[key] else math.nan
    return f"{before[key]:>7.1f} {after[key]:>7.1f} {ratio:>5.2f}"


def report(results: dict) -> str:
    lines = [
        f"{'':<23}  {'p50 ms at the client':^21}  {'requests / s':^21}  {'gateway CPU ms / request':^21}",
        f"{'backend':<7} {'endpoint':<5} {'photo':>6} {'c':>2}  "
        + "  ".join(f"{'before':>7} {'after':>7} {'ratio':>5}" for _ in range(3))
        + "  err",
    ]
    for backend, by_endpoint in results["runs"].items():
        for endpoint, by_photo in by_endpoint.items():
            for label, by_c in by_photo.items():
                for c, by_rev in by_c.items():
                    after, before = by_rev["after"], by_rev.get("before")
                    errors = after["errors"] + (before["errors"] if before else 0)
                    cells = "  ".join(
                        _cell(before, after, key) for key in ("p50_ms", "throughput_rps", "cpu_ms_per_request")
                    )
                    lines.append(f"{backend:<7} {endpoint:<5} {label:>6} {c:>2}  {cells}  {errors:>3}")
    lines.append(
        "six-face photo, API, this revision: the best face against faces=all (p50 ms, req/s, CPU ms / request)"
    )
    for backend, by_c in results["every_face"].items():
        for c, variants in by_c.items():
            one, every = variants["one_face"], variants["every_face"]
            lines.append(
                f"  {backend:<7} c={c:<2} one face {one['p50_ms']:.1f}, {one['throughput_rps']:.0f}/s, "
                f"{one['cpu_ms_per_request']:.1f}; every face {every['p50_ms']:.1f}, {every['throughput_rps']:.0f}/s, "
                f"{every['cpu_ms_per_request']:.1f}: {every['p50_ms'] / one['p50_ms']:.2f}x the p50, "
                f"{every['cpu_ms_per_request'] / one['cpu_ms_per_request']:.2f}x the CPU"
            )
    for backend, by_revision in results["rss_mb"].items():
        lines.append(
            f"resident memory after the runs, {backend}: "
            + ", ".join(f"{n} {mb:.0f} MB" for n, mb in by_revision.items())
        )
    lines.append("Server-Timing medians (ms), 1 client:")
    for backend, by_endpoint in results["runs"].items():
        for endpoint, by_photo in by_endpoint.items():
            for label, by_c in by_photo.items():
                for name, summary in by_c.get("1", {}).items():
                    lines.append(f"  {backend:<7} {endpoint:<5} {label:>6} {name:<6} {summary['server_timing_ms']}")
    lines.append("targets:")
    for name, t in results["targets"].items():
        verdict = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT MET")
        lines.append(f"  {name:<42} {t['value']!s:>8}  target {t['target']:<7} {verdict}")
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------------------------


def profile(endpoint: str, megapixels: float, requests: int, backend: str) -> int:
    """pyinstrument over ``requests`` requests through Flask's test client (the app in this process; no HTTP)."""
    from pyinstrument import Profiler

    from app import create_app

    with tempfile.TemporaryDirectory(prefix="bench-gateway-profile-") as work, contextlib.ExitStack() as stack:
        config = export_instant_servables(Path(work))
        settings = {"model_config": config, "poll_interval": 0, "rate_limit": "", "warmup": False, "backend": backend}
        if backend == "grpc":
            from app.model_server import ModelServer

            server = stack.enter_context(ModelServer(config, poll_interval=0, warmup=False))
            settings["serving_target"] = server.address
        app = create_app(settings)
        stack.callback(app.extensions["serving"].close)
        client = app.test_client()
        request = request_for(endpoint, harness.astronaut_jpeg(megapixels))
        check = check_for(endpoint)

        def send() -> None:
            response = client.post(request.path, data=request.body, headers=dict(request.headers))
            reply = harness.Reply(response.status_code, dict(response.headers), response.data, 0.0)
            problem = f"HTTP {response.status_code}" if response.status_code != 200 else check(reply)
            if problem:
                raise SystemExit(f"{endpoint}: {problem}: {response.data[:300]!r}")

        for _ in range(10):
            send()
        profiler = Profiler(interval=0.0002)
        started = time.perf_counter()
        with profiler:
            for _ in range(requests):
                send()
        seconds = time.perf_counter() - started
        print(profiler.output_text(unicode=True, color=False, show_all=False))
        print(f"{requests} requests, {seconds / requests * 1000:.2f} ms each (profiled, in process)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-models"]:
        return serve_models(*argv[1:3])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="small photos, short runs: checks that the script works")
    parser.add_argument("--json", default=None, help=f"where to write the results (default {RESULTS})")
    parser.add_argument(
        "--before", default=BEFORE, help=f"the revision to compare with (default {BEFORE}); '' for none"
    )
    parser.add_argument("--backends", default="local,grpc", help="comma-separated: local, grpc (default both)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds each variant of a measurement is driven")
    parser.add_argument("--rounds", type=int, default=3, help="slices a measurement's variants take turns in")
    parser.add_argument("--endpoints", default="api,page", help="comma-separated: api, page (default both)")
    parser.add_argument("--megapixels", default="1,12", help="comma-separated photo sizes (default 1,12)")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts (default 1,8)")
    parser.add_argument("--profile", choices=sorted(ENDPOINTS), help="profile one endpoint in process, then stop")
    parser.add_argument("--profile-megapixels", type=float, default=1.0)
    parser.add_argument("--profile-requests", type=int, default=300)
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - {"local", "grpc"}:
        parser.error(f"--backends: unknown {', '.join(sorted(unknown))} (local, grpc)")
    if args.profile:
        return profile(args.profile, args.profile_megapixels, args.profile_requests, args.backends[0])
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if unknown := set(args.endpoints) - set(ENDPOINTS) or not args.endpoints:
        parser.error(f"--endpoints: unknown {', '.join(sorted(unknown))} (api, page)")
    if args.smoke:
        args.megapixels, args.concurrency, args.warmup = (0.25, 1.0), (1, 2), 2
        args.seconds, args.max_requests, args.rounds = min(args.seconds, 0.5), 6, 2
        out = Path(args.json) if args.json else None
    else:
        args.megapixels = tuple(float(mp) for mp in args.megapixels.split(","))
        args.concurrency = tuple(int(c) for c in args.clients.split(","))
        args.warmup, args.max_requests = 10, None
        out = Path(args.json) if args.json else RESULTS
    results = run(args)
    results["smoke"] = args.smoke
    print(report(results))
    harness.write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
