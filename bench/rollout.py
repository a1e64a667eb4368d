"""Canary rollouts under gunicorn: how closely the traffic split follows its weights, and what a shadow costs.

``app:create_app()`` on the local backend (one worker, the project's gunicorn.conf.py) serves a copy of the
demo servables in which every servable also has version 2 (a copy of 1), labelled ``canary`` (1 is
``stable``). Clients are told apart by X-Forwarded-For (``GATEWAY_TRUSTED_PROXIES=1``).

1. **Split**: with ``[search] traffic = { stable = 90, canary = 10 }``, each of ``--clients`` clients
   searches once; the share each arm answered, against its weight (target: within 3 points).
2. **Shadow overhead**: one client posts the astronaut portrait to the result page (JSON: all four
   stages) under three pipeline files, rewritten while the gateway runs (it reads the file again without
   a restart): no rollout; ``traffic = { stable = 100 }``; and the same with ``shadow = "canary"``. Short
   blocks of each alternate (40 rounds of 5 requests, each round starting with another variant), so that
   a machine whose load drifts weighs on all three alike. p50 and p95 of each, side by side, from the same
   run, and the paired difference (median over rounds of the blocks' medians); the shadow's cost is the
   difference of the last two p50s (target: at most 2 ms). The shadowed stage is the search (the recipe
   of docs/canary.md: a new gallery); the same run also measures every stage shadowed at once, which
   doubles the model work per request, as information.

    .venv/bin/python -m bench.rollout                      # writes bench/results/rollout.json
    .venv/bin/python -m bench.rollout --smoke --json /tmp/rollout.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support import harness

RESULTS = harness.REPO / "bench" / "results" / "rollout.json"
SERVABLES = ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime")
STAGES = {"detect": "face_detection", "encode": "twingan_latent_encoder", "search": "latent_search_model",
          "translate": "ugatit_selfie2anime"}  # fmt: skip
TARGETS = {"split_error_points": ("<=", 3.0), "shadow_p50_overhead_ms": ("<=", 2.0), "errors": ("<=", 0)}
POLL = 0.2


def serving_folder(source: Path, work: Path) -> Path:
    """A copy of the demo servables where each also has version 2, every version loaded, stable -> 1, canary -> 2."""
    models = work / "serving_models"
    shutil.copytree(source.parent / "serving_models", models, ignore=shutil.ignore_patterns(".*"))
    blocks = []
    for name in SERVABLES:
        if not (models / name / "2").exists():
            shutil.copytree(models / name / "1", models / name / "2")
        blocks.append(
            f'  config {{\n    name: "{name}"\n    base_path: "/models/{name}"\n    model_platform: "tensorflow"\n'
            "    model_version_policy { specific { versions: 1 versions: 2 } }\n"
            '    version_labels { key: "stable" value: 1 }\n    version_labels { key: "canary" value: 2 }\n  }'
        )
    config = work / "serving_models.config"
    config.write_text("model_config_list {\n" + "\n".join(blocks) + "\n}\n", encoding="utf-8")
    return config


def pipeline_text(rollouts: dict[str, str]) -> str:
    """The shipped pipeline.toml with rollout lines added to the stages named."""
    text = (harness.REPO / "pipeline.toml").read_text(encoding="utf-8")
    for stage, lines in rollouts.items():
        end = text.index("\n", text.index(f"[{stage}]")) + 1
        text = text[:end] + lines + "\n" + text[end:]
    return text


def get(port: int, path: str) -> bytes:
    client = harness.Client(port)
    try:
        return client.send(harness.Request("GET", path)).body
    finally:
        client.close()


def get_json(port: int, path: str) -> dict:
    return json.loads(get(port, path))


def metric(port: int, name: str, **labels: str) -> float:
    text = get(port, "/metrics").decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def use(port: int, path: Path, rollouts: dict[str, str]) -> None:
    """Write the pipeline file and wait until the running gateway has it in force (as /api/v1/models says)."""
    path.write_text(pipeline_text(rollouts), encoding="utf-8")
    wanted = {stage: ("shadow" in lines, "traffic" in lines) for stage, lines in rollouts.items()}
    deadline = time.monotonic() + 30
    while True:
        found = get_json(port, "/api/v1/models")
        stages = found["pipeline"]["stages"]
        now = {stage: (stages[stage]["shadow"] is not None, stages[stage]["traffic"] is not None) for stage in STAGES}
        if all(now[stage] == wanted.get(stage, (False, False)) for stage in STAGES):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the pipeline file was not taken: {found['pipeline'].get('refused')}")
        time.sleep(POLL / 2)


def split(port: int, path: Path, clients: int, photo: bytes) -> dict:
    use(port, path, {"search": "traffic = { stable = 90, canary = 10 }"})
    body, content_type = harness.multipart({"k": "5"}, {"image_file": ("face.jpg", photo, "image/jpeg")})

    def request(_client: int, n: int) -> harness.Request:
        address = f"10.{n // 62500}.{n // 250 % 250}.{n % 250 + 1}"
        return harness.Request(
            "POST", "/api/v1/search", body, {"Content-Type": content_type, "X-Forwarded-For": address}
        )

    run = harness.drive(port, request, 4, count=clients, keep_replies=True)
    arms = Counter(json.loads(reply.body)["arms"]["search"] for reply in run.replies if reply.status == 200)
    shares = {arm: round(100 * arms[arm] / clients, 2) for arm in ("stable", "canary")}
    return {
        "clients": clients,
        "weights": {"stable": 90, "canary": 10},
        "answered": dict(arms),
        "share_percent": shares,
        "error_points": round(max(abs(shares["stable"] - 90), abs(shares["canary"] - 10)), 2),
        "errors": run.summary()["errors"],
    }


def overhead(port: int, path: Path, photo: bytes, variants: dict[str, dict], *, rounds: int, block: int) -> dict:
    """p50/p95 of the page (JSON) under each pipeline file, measured in alternating blocks in one run."""
    body, content_type = harness.multipart({"k": "5"}, {"image_file": ("face.jpg", photo, "image/jpeg")})
    request = harness.Request(
        "POST", "/detect_face/image", body,
        {"Content-Type": content_type, "Accept": "application/json", "X-Forwarded-For": "10.9.9.9"},
    )  # fmt: skip
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    block_medians: dict[str, list[float]] = {name: [] for name in variants}
    stage_times: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    errors = Counter()
    outcomes = ("compared", "failed", "incomparable", "skipped", "dropped")
    counted = {outcome: metric(port, "gateway_shadow_requests_total", outcome=outcome) for outcome in outcomes}
    names = list(variants)
    for round_ in range(rounds):
        # Each round starts with another variant, so that none always comes right after the same one.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            use(port, path, variants[name])
            run = harness.drive(port, lambda _c, _n: request, 1, count=block, keep_replies=True)
            latencies[name] += run.latencies
            block_medians[name].append(statistics.median(run.latencies) if run.latencies else float("nan"))
            errors.update(run.errors)
            stage_times[name] += [
                harness.parse_server_timing(reply.headers.get("Server-Timing", "")) for reply in run.replies
            ]
    time.sleep(1.0)  # the last shadow copies finish
    results = {}
    for name, values in latencies.items():
        p50, p95 = harness.percentiles(values, (50, 95))
        stages = sorted({stage for timing in stage_times[name] for stage in timing})
        results[name] = {
            "requests": len(values),
            "p50_ms": round(p50 * 1000, 2),
            "p95_ms": round(p95 * 1000, 2),
            # Each stage's median as the page's Server-Timing says (model-<stage>: the model call alone).
            "stage_p50_ms": {
                stage: round(statistics.median(t[stage] for t in stage_times[name] if stage in t), 2)
                for stage in stages
            },
        }
    # Paired: the median over rounds of one variant's block median minus the one before it in ``variants``; the
    # machine's load drifts slowly, so blocks of the same round see about the same load.
    for earlier, later in itertools.pairwise(names):
        differences = [b - a for a, b in zip(block_medians[earlier], block_medians[later], strict=True)]
        results[f"{later}_minus_{earlier}_paired_ms"] = round(statistics.median(differences) * 1000, 2)
    results["errors"] = sum(errors.values())
    results["error_kinds"] = dict(errors)
    shadows = {
        outcome: metric(port, "gateway_shadow_requests_total", outcome=outcome) - counted[outcome]
        for outcome in outcomes
    }
    results["shadows_compared"] = shadows.pop("compared")
    results["shadows_not_compared"] = shadows
    return results


def bench(config: Path, *, clients: int, rounds: int, block: int) -> dict:
    photo = harness.astronaut_jpeg(0.25)
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as scratch:
        work = Path(scratch)
        served = serving_folder(config, work)
        pipeline = work / "pipeline.toml"
        pipeline.write_text(pipeline_text({}), encoding="utf-8")
        env = {
            **harness.BENCH_ENV,
            "GATEWAY_MODEL_CONFIG": str(served),
            "GATEWAY_POLL_INTERVAL": str(POLL),
            "GATEWAY_TRUSTED_PROXIES": "1",
            # One worker for the whole run: a recycled worker would start cold and with its counters at zero.
            "GATEWAY_MAX_REQUESTS": "0",
        }
        with harness.gunicorn("gateway", "app:create_app()", env, work) as server:
            port = server.port
            # Warm every version's sessions (a first run of a TensorFlow session is slow).
            for label in ("stable", "canary"):
                body, content_type = harness.multipart(
                    {"k": "5", "label": label}, {"image_file": ("face.jpg", photo, "image/jpeg")}
                )
                warm = harness.Request("POST", "/detect_face/image", body,
                                       {"Content-Type": content_type, "Accept": "application/json"})  # fmt: skip
                harness.drive(port, lambda _c, _n, warm=warm: warm, 1, count=3)
            harness.log(f"rollout: split over {clients} clients ...")
            split_result = split(port, pipeline, clients, photo)
            harness.log(f"rollout: shadow overhead, {rounds} rounds of {block} requests per variant ...")
            search = overhead(
                port, pipeline, photo,
                {
                    "no_rollout": {},
                    "split": {"search": "traffic = { stable = 100 }"},
                    "split_and_shadow": {"search": 'traffic = { stable = 100 }\nshadow = "canary"'},
                },
                rounds=rounds, block=block,
            )  # fmt: skip
            harness.log("rollout: every stage shadowed ...")
            every = overhead(
                port, pipeline, photo,
                {
                    "split": {stage: "traffic = { stable = 100 }" for stage in STAGES},
                    "split_and_shadow": {stage: 'traffic = { stable = 100 }\nshadow = "canary"' for stage in STAGES},
                },
                rounds=rounds, block=block,
            )  # fmt: skip
            alive = server.process.poll() is None
    return {
        "split": split_result,
        "shadow_search": search,
        "shadow_every_stage": every,
        "server_alive_at_end": alive,
    }


def judge(results: dict) -> dict:
    search = results["shadow_search"]
    values = {
        "split_error_points": results["split"]["error_points"],
        "shadow_p50_overhead_ms": round(search["split_and_shadow"]["p50_ms"] - search["split"]["p50_ms"], 2),
        "errors": results["split"]["errors"] + search["errors"] + results["shadow_every_stage"]["errors"],
    }
    return {
        name: {"value": values[name], "target": f"{op} {limit}", "met": values[name] <= limit}
        for name, (op, limit) in TARGETS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few requests: checks that the script works")
    parser.add_argument(
        "--model-config", help="serving_models.config of the demo servables (default: the repository's)"
    )
    parser.add_argument("--json", default=None, help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--clients", type=int, default=2000, help="clients of the split, one search each")
    parser.add_argument("--rounds", type=int, default=40, help="blocks of each variant, alternating")
    parser.add_argument("--block", type=int, default=5, help="requests per block")
    args = parser.parse_args(argv)
    if args.smoke:
        args.clients, args.rounds, args.block = 200, 2, 4
    out = Path(args.json) if args.json else (None if args.smoke else RESULTS)
    results = bench(harness.model_config(args.model_config), clients=args.clients, rounds=args.rounds, block=args.block)
    results["smoke"] = args.smoke
    results["targets"] = judge(results)
    s = results["split"]
    print(
        f"split over {s['clients']} clients, weights stable 90 / canary 10: stable {s['share_percent']['stable']} %, "
        f"canary {s['share_percent']['canary']} % (off by {s['error_points']} points), {s['errors']} errors"
    )
    for title, key in (("search shadowed", "shadow_search"), ("every stage shadowed", "shadow_every_stage")):
        part = results[key]
        variants = [name for name in part if isinstance(part[name], dict) and "p50_ms" in part[name]]
        cells = ", ".join(f"{name} p50 {part[name]['p50_ms']} ms p95 {part[name]['p95_ms']} ms" for name in variants)
        delta = part["split_and_shadow"]["p50_ms"] - part["split"]["p50_ms"]
        paired = part["split_and_shadow_minus_split_paired_ms"]
        print(
            f"{title}: {cells}; shadow adds {delta:+.2f} ms to p50 (paired by round: {paired:+.2f} ms; "
            f"{part['shadows_compared']:.0f} copies compared)"
        )
    for name, t in results["targets"].items():
        print(f"  {name:<24} {t['value']!s:>8}  target {t['target']:<6} {'met' if t['met'] else 'NOT MET'}")
    harness.write_results(results, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
