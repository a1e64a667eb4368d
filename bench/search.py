"""Benchmark of latent_search_model: exact top-k over an N x D float32 gallery against the bandwidth floor and peers.

One run measures, side by side:

* ``floor``   the memory-bandwidth floor: numpy streaming the same matrix once, as ``matrix @ q``
              (OpenBLAS sgemv, multi-threaded) and ``matrix.sum()`` (one core); the faster is the floor;
* ``tfnorm``  the tutorial's formulation, ``tf.norm(latents - query, axis=1)`` then ``top_k`` (tf.function);
* ``faiss``   ``faiss.IndexFlatL2`` (pip ``faiss-cpu``, see requirements-bench.txt; skipped if missing);
* ``ours``    the exported ``latent_search_model`` SavedModel, loaded and run the TF Serving way
              (TF1 Session, ``loader.load``, run by SignatureDef tensor names).

Each method runs in its own worker process, so its memory high-water (VmHWM, reset after
loading through /proc/self/clear_refs) is its own; the workers are driven in interleaved
rounds so that noise from other work on the machine falls on all methods alike. The
parent never imports TensorFlow or holds the matrix.

    .venv/bin/python -m bench.search                    # N=1M, D=128 (the demo encoder's latent), one query per call
    .venv/bin/python -m bench.search --queries 8        # ... eight queries per call
    .venv/bin/python -m bench.search --n 100000 --d 4096   # the first demo encoder's latent size
    .venv/bin/python -m bench.search --scaling          # N in {100k, 1M} x {1, 8} queries per call
    .venv/bin/python -m bench.search --smoke            # tiny sizes, seconds: checks the script works
    .venv/bin/python -m bench.search --json out.json    # also write the results

The approximate (IVF) search, against exact search and faiss (bench/search_ivf.py):

    .venv/bin/python -m bench.search --ivf --n 1000000      # recall, build, memory, p50/p99 at 1 and 8 queries
    .venv/bin/python -m bench.search --ivf --n 10000000 --json bench/results/ivf_10m.json
    .venv/bin/python -m bench.search --crossover            # the gallery size where IVF overtakes exact search
    .venv/bin/python -m bench.search --smoke --ivf          # tiny sizes, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = "@@bench "  # worker replies start with this, so library chatter on stdout is ignored
MAX_QUERIES = 8
MB = 1 << 20
TARGETS = {
    "ours/floor": ("<=", 1.3),
    "tfnorm/ours": (">=", 3.0),
    "ours/faiss": ("<=", 1.0),
}
MEMORY_SLACK_BYTES = 200 * MB
MEMORY_FACTOR = 1.1


# -- memory ---------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS, so the next reading is the peak of what follows (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- workers (child processes) --------------------------------------------------------------------


Search = Callable[..., Any]  # search(queries, loop, setting=None): setting is a method's knob (probes)


def _load_floor(workdir: Path, k: int) -> tuple[Search, dict[str, Any]]:
    import numpy as np

    matrix = np.load(workdir / "gallery.npy")
    variant = {"name": "gemv"}

    def search(queries: np.ndarray, loop: bool, setting: Any = None) -> None:
        # Neither variant ranks anything: they only stream the matrix once, the floor for any exact search.
        if variant["name"] == "gemv":
            # A 1-D operand makes numpy call sgemv; a 2-D one would go through sgemm.
            matrix @ (queries[0] if len(queries) == 1 else queries.T)
        else:
            matrix.sum()

    return search, {"variant": variant}


def _load_tfnorm(workdir: Path, k: int) -> tuple[Search, dict[str, Any]]:
    import numpy as np
    import tensorflow as tf

    latents = tf.Variable(np.load(workdir / "gallery.npy"), trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def one(query: tf.Tensor) -> tf.Tensor:
        # The original tutorial's search: an [N, D] difference, its norm per row, then top_k.
        distances = tf.norm(latents - query, axis=1)
        return tf.math.top_k(-distances, k=k).indices

    def search(queries: np.ndarray, loop: bool, setting: Any = None) -> np.ndarray:
        return np.stack([one(q).numpy() for q in queries])

    return search, {}


def _load_faiss(workdir: Path, k: int) -> tuple[Search, dict[str, Any]]:
    import faiss
    import numpy as np

    matrix = np.load(workdir / "gallery.npy")
    index = faiss.IndexFlatL2(matrix.shape[1])
    index.add(matrix)
    del matrix  # faiss keeps its own copy; counting both would be unfair to it

    def search(queries: np.ndarray, loop: bool, setting: Any = None) -> np.ndarray:
        if loop:
            return np.concatenate([index.search(q[None], k)[1] for q in queries])
        return index.search(queries, k)[1]

    return search, {"faiss_version": faiss.__version__, "threads": faiss.omp_get_max_threads()}


def load_servable(version_dir: Path, k: int) -> tuple[Search, dict[str, Any]]:
    """A search servable loaded the TF Serving way (TF1 Session, ``loader.load``, run by SignatureDef tensor
    names); ``setting`` feeds its ``probes`` input where it has one (None: the stored default)."""
    import numpy as np
    import tensorflow as tf

    session = tf.compat.v1.Session(graph=tf.Graph())
    meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
    signature = meta_graph.signature_def["serving_default"]
    fetches = {alias: info.name for alias, info in signature.outputs.items()}
    latent_name, k_name = signature.inputs["target_latent"].name, signature.inputs["k_num"].name
    probes_name = signature.inputs["probes"].name if "probes" in signature.inputs else None
    k_value = np.array(k, np.int32)

    def run(batch: np.ndarray, setting: Any) -> np.ndarray:
        # The same call the gateway's local runtime makes: session.run by SignatureDef tensor names.
        feed = {latent_name: batch, k_name: k_value}
        if setting is not None and probes_name is not None:
            feed[probes_name] = np.array(setting, np.int32)
        return session.run(fetches, feed_dict=feed)["indices"]

    def search(queries: np.ndarray, loop: bool, setting: Any = None) -> np.ndarray:
        if loop:
            return np.concatenate([run(q[None], setting) for q in queries])
        return run(queries, setting)

    return search, {}


def _load_ours(workdir: Path, k: int) -> tuple[Search, dict[str, Any]]:
    return load_servable(workdir / "model" / "1", k)


def _ivf_loaders() -> dict[str, Callable[[Path, int], tuple[Search, dict[str, Any]]]]:
    from bench import search_ivf

    return search_ivf.LOADERS


LOADERS = {"floor": _load_floor, "tfnorm": _load_tfnorm, "faiss": _load_faiss, "ours": _load_ours}
# Methods whose start-up is TensorFlow's: its own memory is the baseline, not counted against the gallery.
TENSORFLOW_METHODS = {"tfnorm", "ours", "ivf", "exact"}


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(PROTOCOL + json.dumps(message) + "\n")
    sys.stdout.flush()


def worker(method: str, workdir: Path, k: int) -> None:
    """Serve timing commands for one method over stdin/stdout until told to quit."""
    import numpy as np

    loaders = {**LOADERS, **_ivf_loaders()}
    queries = np.load(workdir / "queries.npy")
    base_kb = _status_kb("VmRSS")
    if method in TENSORFLOW_METHODS:  # count TensorFlow's own start-up in the baseline, not in the gallery
        import tensorflow as tf

        tf.constant(0.0).numpy()
        base_kb = _status_kb("VmRSS")
    can_reset = _reset_peak()
    started = time.perf_counter()
    search, info = loaders[method](workdir, k)
    first = search(queries[:1], False)  # warm-up: first-call allocations and graph optimisation
    load_seconds = time.perf_counter() - started
    _reply(
        {
            "ready": True,
            "indices": None if first is None else np.asarray(first).tolist(),
            "base_mb": base_kb / 1024,
            "loaded_mb": _status_kb("VmRSS") / 1024,
            "load_peak_mb": _status_kb("VmHWM") / 1024,
            "load_seconds": load_seconds,
            "peak_resettable": can_reset,
            **info,
        }
    )
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            return
        setting = command.get("setting")
        if command["cmd"] == "neighbours":  # the top k of every query, in calls of up to 8
            found = [search(queries[i : i + MAX_QUERIES], False, setting) for i in range(0, len(queries), MAX_QUERIES)]
            _reply({"indices": np.concatenate(found).tolist()})
            continue
        if "variant" in command and "variant" in info:
            info["variant"]["name"] = command["variant"]
        size = command["batch"]
        # cycle: each call takes the next queries (an IVF search probes other lists for each), else the first.
        starts = [(i * size) % max(1, len(queries) - size + 1) for i in range(command["repeats"])]
        if not command.get("cycle"):
            starts = [0] * command["repeats"]
        search(queries[:size], command["loop"], setting)  # one untimed call after switching batch size or variant
        _reset_peak()
        before_kb = _status_kb("VmRSS")
        times = []
        for start in starts:
            batch = queries[start : start + size]
            began = time.perf_counter()
            search(batch, command["loop"], setting)
            times.append(time.perf_counter() - began)
        _reply({"times": times, "before_mb": before_kb / 1024, "peak_mb": _status_kb("VmHWM") / 1024})


# -- the parent ---------------------------------------------------------------------------------------


def prepare(workdir: Path, n: int, d: int, seed: int) -> None:
    """(child) Write a seeded gallery, the queries and the exported SavedModel into workdir."""
    import numpy as np

    from app.modelzoo.search import export_search_model

    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((n, d), dtype=np.float32)
    np.save(workdir / "gallery.npy", gallery)
    np.save(workdir / "queries.npy", rng.standard_normal((MAX_QUERIES, d), dtype=np.float32))
    export_search_model(workdir / "model" / "1", gallery, [f"{i:07d}.jpg" for i in range(n)])


class Worker:
    """A child process running one method, driven over a pipe."""

    def __init__(self, method: str, workdir: Path, k: int) -> None:
        self.method = method
        self.log_path = workdir / f"{method}.log"
        self._log = self.log_path.open("w")
        command = [sys.executable, "-m", "bench.search", "--worker", method, "--workdir", str(workdir)]
        self.process = subprocess.Popen(
            [*command, "--k", str(k)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=_child_env(),
            cwd=REPO,
        )
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        for line in self.process.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL) :])
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"worker {self.method} exited with {self.process.wait()}:\n{tail}")

    def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def run(self, repeats: int, batch: int, loop: bool = False, **extra: Any) -> dict[str, Any]:
        return self._send({"cmd": "run", "repeats": repeats, "batch": batch, "loop": loop, **extra})

    def neighbours(self, setting: Any = None) -> list[list[int]]:
        """The top k of every query (the workdir's queries.npy) at ``setting``."""
        return self._send({"cmd": "neighbours", "setting": setting})["indices"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.write('{"cmd": "quit"}\n')
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@contextlib.contextmanager
def workers(methods: list[str], workdir: Path, k: int) -> Iterator[dict[str, Worker]]:
    started: dict[str, Worker] = {}
    try:
        for method in methods:
            print(f"  loading {method} ...", file=sys.stderr, flush=True)
            started[method] = Worker(method, workdir, k)
        yield started
    finally:
        for w in started.values():
            w.close()


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p10_ms": pct(0.1),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "runs": len(times),
    }


def measure(
    pool: dict[str, Worker], cases: list[tuple[str, str, dict[str, Any]]], repeats: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Time each (label, method, run arguments) case in interleaved rounds; p50 over all rounds."""
    per_round = max(1, -(-repeats // rounds))
    samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    extra_mb: dict[str, float] = dict.fromkeys(samples, 0.0)
    peak_mb: dict[str, float] = dict.fromkeys(samples, 0.0)
    for _ in range(rounds):
        for label, method, arguments in cases:
            result = pool[method].run(per_round, **arguments)
            samples[label] += result["times"]
            extra_mb[label] = max(extra_mb[label], result["peak_mb"] - result["before_mb"])
            peak_mb[label] = max(peak_mb[label], result["peak_mb"])
    out = {}
    for label, method, _ in cases:
        ready = pool[method].ready
        out[label] = {
            **_summary(samples[label]),
            "search_peak_mb": peak_mb[label],
            "search_extra_mb": extra_mb[label],
            # What the gallery and the search cost this process over its runtime's own start-up.
            "cost_mb": peak_mb[label] - ready["base_mb"],
            "base_mb": ready["base_mb"],
            "load_peak_mb": ready["load_peak_mb"],
            "load_seconds": ready["load_seconds"],
        }
    return out


def _start(args: argparse.Namespace, n: int, workdir: Path) -> None:
    print(f"preparing N={n:,} D={args.d:,} (gallery {n * args.d * 4 / MB:,.0f} MiB) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "bench.search", "--prepare", "--workdir", str(workdir)]
    log_path = workdir / "prepare.log"
    with log_path.open("w") as log:
        done = subprocess.run(
            [*command, "--n", str(n), "--d", str(args.d), "--seed", str(args.seed)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            cwd=REPO,
        )
    if done.returncode:
        raise RuntimeError(f"preparing the gallery failed ({done.returncode}):\n{log_path.read_text()[-3000:]}")
    print(f"  prepared in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)


def available_methods(wanted: list[str]) -> list[str]:
    if "faiss" in wanted and importlib.util.find_spec("faiss") is None:
        print("faiss-cpu is not installed: the faiss column is skipped (pip install -r requirements-bench.txt)")
        wanted = [m for m in wanted if m != "faiss"]
    return wanted


def _agreement(pool: dict[str, Worker]) -> dict[str, bool]:
    ours = pool["ours"].ready["indices"]
    return {m: w.ready["indices"] == ours for m, w in pool.items() if m != "ours" and w.ready["indices"] is not None}


def _ratio(results: dict[str, dict[str, Any]], top: str, bottom: str) -> float | None:
    if top not in results or bottom not in results:
        return None
    return results[top]["p50_ms"] / results[bottom]["p50_ms"]


def _held(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, target = TARGETS[name]
    ok = value <= target if op == "<=" else value >= target
    return f"{'held' if ok else 'MISSED'} (target {op} {target})"


def main_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    methods = available_methods(["floor", "tfnorm", "faiss", "ours"])
    _start(args, args.n, workdir)
    matrix_bytes = args.n * args.d * 4
    b = args.queries
    with workers(methods, workdir, args.k) as pool:
        cases = [
            ("floor (numpy matrix @ q, sgemv)", "floor", {"batch": b, "variant": "gemv"}),
            ("floor (numpy matrix.sum())", "floor", {"batch": b, "variant": "sum"}),
        ]
        cases += [(m, m, {"batch": b}) for m in methods if m != "floor"]
        results = measure(pool, cases, args.repeats, args.rounds)
        agree = _agreement(pool)
    floor_label = min((label for label in results if label.startswith("floor")), key=lambda x: results[x]["p50_ms"])
    results["floor"] = results[floor_label]
    ratios = {
        "ours/floor": _ratio(results, "ours", "floor"),
        "tfnorm/ours": _ratio(results, "tfnorm", "ours"),
        "ours/faiss": _ratio(results, "ours", "faiss"),
    }
    budget_mb = (MEMORY_FACTOR * matrix_bytes + MEMORY_SLACK_BYTES) / MB
    ours = results["ours"]

    print(f"\nexact top-{args.k}, N={args.n:,} D={args.d:,} float32 ({matrix_bytes / MB:,.0f} MiB), "
          f"{b} quer{'y' if b == 1 else 'ies'} per call, {ours['runs']} timed calls per method in {args.rounds} "
          "interleaved rounds")  # fmt: skip
    header = f"{'method':34} {'p50 ms':>9} {'p10 ms':>9} {'p90 ms':>9} {'GB/s':>7} {'peak MiB':>9} {'cost MiB':>9}"
    print(header)
    print("-" * len(header))
    for label, row in results.items():
        if label == "floor":
            continue
        rate = matrix_bytes / (row["p50_ms"] / 1000) / 1e9
        print(f"{label:34} {row['p50_ms']:9.2f} {row['p10_ms']:9.2f} {row['p90_ms']:9.2f} {rate:7.1f} "
              f"{row['search_peak_mb']:9.0f} {row['cost_mb']:9.0f}")  # fmt: skip
    print(f"\nfloor = {floor_label}")
    for name, value in ratios.items():
        shown = "n/a" if value is None else f"{value:.2f}"
        print(f"{name:12} {shown:>6}  {_held(name, value)}")
    memory_ok = ours["cost_mb"] <= budget_mb
    print(f"ours memory: peak during search {ours['search_peak_mb']:.0f} MiB RSS; over the TF runtime's "
          f"{ours['base_mb']:.0f} MiB start-up: {ours['cost_mb']:.0f} MiB vs budget 1.1 x matrix + 200 MiB = "
          f"{budget_mb:.0f} MiB: {'held' if memory_ok else 'MISSED'}; a search itself raised the peak by "
          f"{ours['search_extra_mb']:.1f} MiB; loading peaked at "
          f"{ours['load_peak_mb'] - ours['base_mb']:.0f} MiB over start-up")  # fmt: skip
    if args.smoke:
        print("(smoke sizes: the targets are meant for N=1M, D=128 and say nothing here)")
    print(f"same top-{args.k} indices as ours: {agree}")
    return {
        "n": args.n,
        "d": args.d,
        "k": args.k,
        "queries_per_call": b,
        "matrix_bytes": matrix_bytes,
        "floor": floor_label,
        "methods": results,
        "ratios": ratios,
        "targets": {name: _held(name, value) for name, value in ratios.items()},
        "memory_budget_mb": budget_mb,
        "memory_held": memory_ok,
        "agree_with_ours": agree,
    }


def scaling_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    methods = available_methods(["floor", "faiss", "ours"])
    sizes = [2_000, 10_000] if args.smoke else [100_000, 1_000_000]
    rows = []
    for n in sizes:
        case_dir = workdir / f"n{n}"
        case_dir.mkdir()
        _start(args, n, case_dir)
        with workers(methods, case_dir, args.k) as pool:
            cases = []
            for b in (1, MAX_QUERIES):
                cases.append((f"floor (sgemv) B={b}", "floor", {"batch": b, "variant": "gemv"}))
                cases.append((f"ours, one call B={b}", "ours", {"batch": b}))
                if b > 1:
                    cases.append((f"ours, {b} calls of 1", "ours", {"batch": b, "loop": True}))
                if "faiss" in pool:
                    cases.append((f"faiss B={b}", "faiss", {"batch": b}))
            results = measure(pool, cases, args.repeats, args.rounds)
        shutil.rmtree(case_dir, ignore_errors=True)
        for label, row in results.items():
            rows.append({"n": n, "case": label, **row})
    print(f"\nscaling: exact top-{args.k}, D={args.d:,}; p50 per call (ms), interleaved rounds")
    header = f"{'N':>8} {'case':26} {'p50 ms':>9} {'ms/query':>9} {'p90 ms':>9} {'cost MiB':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        b = int(row["case"].split("B=")[-1]) if "B=" in row["case"] else MAX_QUERIES
        print(f"{row['n']:8,} {row['case']:26} {row['p50_ms']:9.2f} {row['p50_ms'] / b:9.2f} "
              f"{row['p90_ms']:9.2f} {row['cost_mb']:9.0f}")  # fmt: skip
    return {"d": args.d, "k": args.k, "scaling": rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery faces (default 1,000,000)")
    parser.add_argument("--d", type=int, default=128, help="latent size (default 128, the demo encoder's)")
    parser.add_argument("--k", type=int, default=5, help="neighbours per query (default 5)")
    parser.add_argument("--queries", type=int, default=1, choices=range(1, MAX_QUERIES + 1), metavar="B",
                        help=f"queries per call, 1..{MAX_QUERIES} (default 1)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per method (default 20)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the calls are split into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    parser.add_argument("--scaling", action="store_true", help="N in {100k, 1M} x {1, 8} queries per call")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the script runs")
    parser.add_argument("--workdir", type=Path, help="keep the gallery, queries and model here (default: temporary)")
    parser.add_argument("--ivf", action="store_true", help="the IVF search against exact search and faiss")
    parser.add_argument("--crossover", action="store_true", help="the gallery size where IVF overtakes exact search")
    parser.add_argument("--with-exact", action="store_true", help="--ivf: also time exact search at --n")
    parser.add_argument("--query-count", type=int, default=500, help="--ivf: enrolled and unseen queries, each")
    parser.add_argument("--lists", type=int, help="--ivf: this many lists instead of the default for N")
    parser.add_argument("--quick", action="store_true", help="--ivf: no faiss (a sweep of our settings only)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--ivf-child", choices=["prepare", "build"], help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ivf or args.crossover or args.ivf_child:
        return args  # bench/search_ivf.py sets its own sizes (k = 10: recall@10)
    if args.smoke:
        args.n, args.d, args.repeats, args.rounds = 2_000, 64, 4, 2
    if args.k > args.n:
        parser.error(f"--k {args.k} is larger than --n {args.n}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.workdir, args.k)
        return 0
    if args.prepare:
        prepare(args.workdir, args.n, args.d, args.seed)
        return 0
    if args.ivf or args.crossover or args.ivf_child:
        from bench import search_ivf

        return search_ivf.main(args)
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="search-bench-")) if temporary else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results = scaling_benchmark(args, workdir) if args.scaling else main_benchmark(args, workdir)
    finally:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
    results["smoke"] = args.smoke
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
