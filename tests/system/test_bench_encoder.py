"""The encoder benchmark: its smoke run, so a broken benchmark is noticed by `make test`, and the exact framing
its ceiling table rests on (a changed face cut through the change's own geometry is the unchanged face's chip)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.alignment import CHIP_SIZE, warp_chip, whole_image_map
from tests.support import face_changes as bench
from tests.support.gateway import run_benchmark


def _smooth_picture(height: int = 60, width: int = 52) -> np.ndarray:
    """A picture of soft blobs (so that resampling it twice loses little), different on the left and right."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rng = np.random.default_rng(3)
    out = np.zeros((height, width, 3))
    for _ in range(12):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(4, 10)
        out += rng.uniform(20, 80, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None]
    return np.clip(out + 30, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("kind", "index"), [("flip", 0), ("rotate", 0), ("rotate", 1), ("shift_scale", 1), ("moved", 0), ("moved", 1)]
)
def test_the_exact_framing_undoes_the_change(kind, index):
    picture = _smooth_picture()
    frame = np.vstack([whole_image_map(picture.shape), [0, 0, 1]])
    original = warp_chip(picture, frame[:2], CHIP_SIZE).astype(np.float64)
    moved = bench.change(picture, kind, index, face_width=40)
    geometry, mirrored = bench.change_geometry(kind, index, picture.shape[1], picture.shape[0])
    chip_map = geometry @ frame @ (bench.mirror_matrix(CHIP_SIZE, CHIP_SIZE) if mirrored else np.eye(3))
    exact = warp_chip(moved, chip_map[:2], CHIP_SIZE).astype(np.float64)
    framed_whole = warp_chip(moved, frame[:2], CHIP_SIZE).astype(np.float64)
    expected = original[:, ::-1] if mirrored else original
    middle = np.s_[45:105, 45:105]  # away from the reflected borders the change brings in
    assert np.abs(exact[middle] - expected[middle]).mean() < 2.0
    assert np.abs(framed_whole[middle] - original[middle]).mean() > 5.0  # the change did move or mirror the face


def test_geometry_is_identity_for_changes_that_move_nothing():
    for kind in ("down24", "grey", "jpeg30"):
        geometry, mirrored = bench.change_geometry(kind, 0, 25, 25)
        assert not mirrored and np.array_equal(geometry, np.eye(3))


@pytest.mark.long(minutes=1.5)
@pytest.mark.slow
def test_encoder_benchmark_smoke(tmp_path):
    out = tmp_path / "encoder.json"
    result = run_benchmark("encoder", "--smoke", "--json", str(out), timeout=600)
    assert "new top1" in result.stdout and "CPU ms per face" in result.stdout
    results = json.loads(out.read_text())
    assert results["smoke"] is True
    for dataset in ("lfw", "lfw_aligned", "lfw_exact", "samples"):
        assert set(results[dataset]["new"]) == {"flip", "rotate", "shift_scale", "down24", "grey", "jpeg30",
                                                "moved", "combined", "all"}  # fmt: skip
    assert results["cpu"]["new"]["batched_ms_per_face"] > 0
