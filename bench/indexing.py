"""Benchmark of build-index's indexing: photos a second on ~1 MP photos, single faces and group photos, and where
the time goes; the pooled, batched indexer side by side with the one-photo-at-a-time way it replaced.

The photos are made from the six sample group photos of the demo (``@vladmandic/face-api``, 22 people):
group photos are random crops of them (turned slightly, mirrored, JPEG re-saved) at about 1 MP;
single-face photos are crops around one face (the demo gallery's record gives the boxes), scaled to
about 1 MP. The demo detector and encoder run in-process (the embedded backend), as `make index` runs them.

    .venv/bin/python -m bench.indexing                     # 2,000 photos (1,000 single, 1,000 group), both ways
    .venv/bin/python -m bench.indexing --photos 400        # fewer
    .venv/bin/python -m bench.indexing --smoke             # a handful: checks the script works
    .venv/bin/python -m bench.indexing --json out.json     # also write the results

Both ways run the same photos with the same models in one run; ``sequential`` is one photo decoded,
detected, cropped and encoded after the other (workers=1, batch 1: the indexer before this one),
``pooled`` decodes and detects four photos at once in threads and encodes in batches of 16.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from tests.support import harness

REPO = harness.REPO
WAYS = {"sequential": {"workers": 1, "batch_size": 1}, "pooled": {"workers": 4, "batch_size": 16}}
MEGAPIXEL = 1_000_000


def make_photos(folder: Path, count: int, models: Path, seed: int = 0) -> dict[str, int]:
    """``count`` photos of about 1 MP under folder/single and folder/group; how many of each."""
    from app.gallery.record import read_record
    from app.modelzoo import weights

    rng = np.random.default_rng(seed)
    samples = {path.name: Image.open(path).convert("RGB") for path in weights.sample_photos()}
    faces, _ = read_record(models / "latent_search_model" / "1")
    boxes = [(source.rpartition("/")[2], box) for source, box in zip(faces.sources, faces.boxes, strict=True)]
    made = {"single": 0, "group": 0}
    for index in range(count):
        kind = "single" if index % 2 == 0 else "group"
        if kind == "single":
            name, (ymin, xmin, ymax, xmax) = boxes[rng.integers(len(boxes))]
            photo = samples[name]
            width, height = photo.size
            cy, cx = (ymin + ymax) / 2 * height, (xmin + xmax) / 2 * width
            side = max(ymax - ymin, xmax - xmin) * max(width, height) * rng.uniform(2.5, 3.5)
            crop = photo.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)))
        else:
            photo = samples[sorted(samples)[rng.integers(len(samples))]]
            width, height = photo.size
            keep = rng.uniform(0.75, 1.0)
            left, top = rng.uniform(0, 1 - keep) * width, rng.uniform(0, 1 - keep) * height
            crop = photo.crop((int(left), int(top), int(left + keep * width), int(top + keep * height)))
        crop = crop.rotate(float(rng.uniform(-6, 6)), resample=Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = (MEGAPIXEL / (crop.width * crop.height)) ** 0.5
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
        target = folder / kind / f"{kind}_{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        crop.save(target, quality=int(rng.integers(80, 95)))
        made[kind] += 1
    return made


def run(photos: int, models: Path, *, ways: tuple[str, ...] = tuple(WAYS)) -> dict:
    from app.gallery.indexing import collect_faces
    from app.modelzoo.demo import demo_pipeline
    from app.serving.local_backend import LocalBackend

    results: dict = {"photos": photos, "cpu_cores": os.cpu_count(), "ways": {}}
    with tempfile.TemporaryDirectory(prefix="bench-indexing-") as scratch:
        folder = Path(scratch) / "photos"
        results["made"] = make_photos(folder, photos, models)
        config = Path(scratch) / "models.config"
        blocks = "".join(
            f'config {{ name: "{name}" base_path: "{models / name}" model_platform: "tensorflow" }} '
            for name in ("face_detection", "twingan_latent_encoder")
        )
        config.write_text(f"model_config_list {{ {blocks}}}", encoding="utf-8")
        with LocalBackend(config, poll_interval=0) as backend:
            for kind in ("single", "group"):
                for way in ways:
                    started = time.perf_counter()
                    found = collect_faces(
                        folder / kind, backend, config=demo_pipeline(), all_faces=kind == "group", **WAYS[way]
                    )
                    seconds = time.perf_counter() - started
                    report = found.report
                    results["ways"].setdefault(kind, {})[way] = {
                        "photos": report.photos,
                        "faces": len(report.indexed),
                        "no_face": len(report.no_face),
                        "seconds": seconds,
                        "photos_per_s": report.photos / seconds,
                        "steps_s": report.steps,
                    }
                    harness.log(f"indexing: {kind} {way}: {report.photos / seconds:.1f} photos/s")
    for ways_run in results["ways"].values():
        if {"sequential", "pooled"} <= set(ways_run):
            ways_run["speedup"] = ways_run["pooled"]["photos_per_s"] / ways_run["sequential"]["photos_per_s"]
    return results


def table(results: dict) -> str:
    lines = [
        f"indexing {results['photos']:,} photos of ~1 MP on {results['cpu_cores']} cores "
        f"({results['made']['single']:,} single-face, {results['made']['group']:,} group)",
        f"{'photos':<8}{'way':<12}{'photos/s':>10}{'faces':>8}  where the time goes (thread-seconds)",
    ]
    for kind, ways_run in results["ways"].items():
        for way, row in ways_run.items():
            if way == "speedup":
                continue
            total = sum(row["steps_s"].values()) or 1.0
            steps = ", ".join(f"{step} {seconds / total:.0%}" for step, seconds in row["steps_s"].items())
            lines.append(f"{kind:<8}{way:<12}{row['photos_per_s']:>10.1f}{row['faces']:>8}  {steps}")
        if "speedup" in ways_run:
            lines.append(f"{kind:<8}{'pooled / sequential':<22}{ways_run['speedup']:>8.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="a handful of photos: checks the script works")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--models", type=Path, help="the demo servables' folder [default: serving_models/, exported]")
    args = parser.parse_args(argv)
    models = args.models or harness.model_config(None).parent / "serving_models"
    results = run(8 if args.smoke else args.photos, models.resolve())
    results["smoke"] = args.smoke
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
