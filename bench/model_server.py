"""Benchmark of `python -m app.model_server`: what a Predict costs over gRPC through the model server, against the call
inside the process.

Issue 25's figures, for a tiny model (``half_plus``: float32 ``[4]`` in and out) and a 1 MP image model
(uint8 ``[1,1000,1000,3]`` in, its mean colour out). One run measures, per model, interleaved (each
repetition times every route once, in a shuffled order, so other work on the machine falls on all alike):

``runtime``   ``ModelRuntime.predict`` in this process: the call the server makes for each Predict
``server``    the gateway's gRPC client (``GrpcBackend``) to a ``ModelServer`` in this process, on the same runtime
              (client and server share this process's cores and its GIL)
``double``    the same through the tests' double (``tests/support/double.py``: the product server with the fault
              interceptor in front, every knob off): what the interceptor adds
``process``   the same client to ``python -m app.model_server`` in a process of its own: the two-process topology

The overhead of a route is its p50 minus the runtime's. Then calls/s for the tiny model: ``--concurrency`` calls kept
in flight for ``--seconds`` by one client thread (pre-encoded requests, so the client costs little), against each
server, and the runtime called from as many threads, in alternating rounds; the median round is reported. Every
figure comes from this machine (2 cores here) with the client on the same cores: absolute numbers move with load.

    .venv/bin/python -m bench.model_server                  # full run, prints the table
    .venv/bin/python -m bench.model_server --json bench/results/model_server.json
    .venv/bin/python -m bench.model_server --smoke          # a few repetitions: checks the script works
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import tensorflow as tf

from app.model_server import ModelServer
from app.serving import wire
from app.serving.base import ModelRef
from app.serving.grpc_backend import GrpcBackend, model_spec
from app.serving.runtime import ModelRuntime
from tests.support.double import TFServingDouble
from tests.support.model_server import model_server
from tests.support.servables import export_half_plus

PREDICT = "/tensorflow.serving.PredictionService/Predict"
IMAGE_SIDE = 1000  # 1 MP


class MeanColour(tf.Module):
    """A 1 MP photo in, its mean colour out: the size of the request is what is measured, not the model's work."""

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="image")])
    def serve(self, image):
        return {"mean": tf.reduce_mean(tf.cast(image, tf.float32), axis=[1, 2])}


def export_models(root: Path) -> Path:
    export_half_plus(root / "half_plus" / "1", offset=2.0)
    staging = root / "mean_colour" / ".1.tmp"
    module = MeanColour()
    tf.saved_model.save(module, str(staging), signatures={"serving_default": module.serve})
    staging.rename(root / "mean_colour" / "1")
    config = root / "models.config"
    blocks = "".join(
        f'  config {{ name: "{name}" base_path: "{root / name}" model_platform: "tensorflow" }}\n'
        for name in ("half_plus", "mean_colour")
    )
    config.write_text(f"model_config_list {{\n{blocks}}}\n", encoding="utf-8")
    return config


def model_inputs() -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return {
        "half_plus": {"x": np.arange(4, dtype=np.float32)},
        "mean_colour": {"image": rng.integers(0, 256, (1, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)},
    }


# -- timing ------------------------------------------------------------------------------------------------------


def interleaved(routes: dict[str, Callable[[], object]], repeats: int, warmup: int, seed: int) -> dict[str, dict]:
    for _ in range(warmup):
        for call in routes.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in routes}
    order = list(routes)
    shuffle = random.Random(seed)
    for _ in range(repeats):
        shuffle.shuffle(order)
        for name in order:
            started = time.perf_counter()
            routes[name]()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: _stats(values) for name, values in times.items()}


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {"p50_ms": statistics.median(ordered), "p10_ms": at(0.1), "p90_ms": at(0.9), "n": len(ordered)}


def calls_per_second_grpc(target: str, request: bytes, concurrency: int, seconds: float) -> float:
    """``concurrency`` Predicts kept in flight by one thread for ``seconds``: completed calls per second."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT)
        call(request, timeout=30)  # connected and warm
        slots = threading.Semaphore(concurrency)
        done = [0]
        failures: list[BaseException] = []
        lock = threading.Lock()

        def finished(future: grpc.Future) -> None:
            if future.exception() is not None:
                failures.append(future.exception())
            with lock:
                done[0] += 1
            slots.release()

        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            slots.acquire()
            call.future(request, timeout=30).add_done_callback(finished)
        for _ in range(concurrency):
            slots.acquire()
        elapsed = time.perf_counter() - started
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed: {failures[0]}")
    return done[0] / elapsed


def calls_per_second_runtime(runtime: ModelRuntime, inputs: dict, concurrency: int, seconds: float) -> float:
    end = time.perf_counter() + seconds

    def worker() -> int:
        count = 0
        while time.perf_counter() < end:
            runtime.predict("half_plus", inputs)
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        total = sum(pool.map(lambda _: worker(), range(concurrency)))
    return total / (time.perf_counter() - started)


# -- the run -----------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-model-server-"))
    config = export_models(scratch / "models")
    inputs = model_inputs()
    runtime = ModelRuntime(config, container_prefix="", poll_interval=0, warmup=False)
    server = ModelServer(runtime=runtime, name="server").start()
    double = TFServingDouble(runtime=runtime, name="double").start()
    print("  starting python -m app.model_server ...", file=sys.stderr, flush=True)
    arguments = [f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"]
    try:
        with model_server(arguments, scratch, rest=False) as process:
            clients = {
                "server": GrpcBackend(server.address, timeout=60),
                "double": GrpcBackend(double.address, timeout=60),
                "process": GrpcBackend(process.grpc_target, timeout=60),
            }
            rows = []
            for index, (name, repeats) in enumerate((("half_plus", args.repeats), ("mean_colour", args.image_repeats))):
                print(f"  measuring {name} ...", file=sys.stderr, flush=True)
                ref, feed = ModelRef(name), inputs[name]
                routes: dict[str, Callable[[], object]] = {
                    "runtime": lambda ref=ref, feed=feed: runtime.predict(ref.name, feed)
                }
                for route, client in clients.items():
                    routes[route] = lambda client=client, ref=ref, feed=feed: client.predict(ref, feed)
                stats = interleaved(routes, repeats, args.warmup, args.seed + index)
                base = stats["runtime"]["p50_ms"]
                rows.append(
                    {
                        "model": name,
                        "input": " ".join(f"{a}:{v.dtype}{list(v.shape)}" for a, v in feed.items()),
                        "routes": stats,
                        "overhead_p50_ms": {route: stats[route]["p50_ms"] - base for route in clients},
                    }
                )
            for client in clients.values():
                client.close()
            throughput = measure_throughput(args, runtime, inputs["half_plus"], server, double, process)
    finally:
        double.stop()
        server.stop()
        runtime.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "smoke": args.smoke,
        "repeats": {"half_plus": args.repeats, "mean_colour": args.image_repeats},
        "rows": rows,
        "throughput": throughput,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "grpcio": grpc.__version__,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
    }


def measure_throughput(args, runtime, feed, server, double, process) -> dict[str, Any]:
    print(f"  calls/s, {args.concurrency} in flight, {args.rounds} rounds of {args.seconds:g} s ...", file=sys.stderr)
    request = wire.encode_predict_request(model_spec(ModelRef("half_plus")), feed)
    routes: dict[str, Callable[[], float]] = {
        "runtime": lambda: calls_per_second_runtime(runtime, feed, args.concurrency, args.seconds),
        "server": lambda: calls_per_second_grpc(server.address, request, args.concurrency, args.seconds),
        "double": lambda: calls_per_second_grpc(double.address, request, args.concurrency, args.seconds),
        "process": lambda: calls_per_second_grpc(process.grpc_target, request, args.concurrency, args.seconds),
    }
    rounds: dict[str, list[float]] = {name: [] for name in routes}
    order = list(routes)
    shuffle = random.Random(args.seed)
    for _ in range(args.rounds):
        shuffle.shuffle(order)
        for name in order:
            rounds[name].append(routes[name]())
    return {
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "calls_per_s": {name: statistics.median(values) for name, values in rounds.items()},
        "rounds": rounds,
    }


def print_table(results: dict[str, Any]) -> None:
    print("\nPredict through the model server vs in the process: p50 ms (p10..p90), overhead = route p50 - runtime p50")
    header = f"{'model':12} {'route':8} {'p50 ms':>9} {'p10..p90':>17} {'overhead':>10} {'x runtime':>10}"
    print(header)
    print("-" * len(header))
    for row in results["rows"]:
        base = row["routes"]["runtime"]["p50_ms"]
        for route, stats in row["routes"].items():
            overhead = row["overhead_p50_ms"].get(route)
            print(
                f"{row['model']:12} {route:8} {stats['p50_ms']:9.3f} "
                f"{stats['p10_ms']:8.2f}..{stats['p90_ms']:<8.2f} "
                f"{'' if overhead is None else f'{overhead:+.3f}':>10} {stats['p50_ms'] / base:9.2f}x"
            )
    throughput = results["throughput"]
    rounds = len(next(iter(throughput["rounds"].values())))
    print(
        f"\nhalf_plus calls/s, {throughput['concurrency']} in flight "
        f"(median of {rounds} rounds of {throughput['seconds']:g} s):"
    )
    for route, value in throughput["calls_per_s"].items():
        print(f"  {route:8} {value:9.0f}")
    print(f"\nmachine: {results['machine']['cpus']} CPUs, load average {results['machine']['load_average']}")
    if results["smoke"]:
        print("(smoke run: too few repetitions for the figures to mean much)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per route, tiny model (default 300)")
    parser.add_argument("--image-repeats", type=int, default=40, help="timed calls per route, 1 MP model (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per route first (default 5)")
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight for calls/s (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one calls/s round (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="calls/s rounds per route (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a few calls and short rounds: checks the script works")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.image_repeats, args.warmup, args.seconds, args.rounds = 5, 3, 1, 0.3, 1
    if min(args.repeats, args.image_repeats, args.concurrency, args.rounds) < 1 or args.seconds <= 0:
        parser.error("repeats, concurrency and rounds must be at least 1, seconds above 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        staging = args.json.with_suffix(args.json.suffix + ".tmp")
        staging.write_text(json.dumps(results, indent=2) + "\n")
        staging.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
