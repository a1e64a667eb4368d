"""Smoke run of bench/footprint.py (both install profiles under gunicorn, a few requests), and its size accounting."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from tests.support import thin_gateway as footprint
from tests.support.gateway import demo_serving_dir, run_benchmark


@pytest.mark.long(minutes=1)
@pytest.mark.slow
def test_footprint_benchmark_smoke(tmp_path: Path, demo_root: Path) -> None:
    config = demo_serving_dir(tmp_path, demo_root)
    out = tmp_path / "footprint.json"
    result = run_benchmark("footprint", "--smoke", "--model-config", str(config), "--json", str(out), timeout=600)
    assert "TensorFlow mapped in the worker" in result.stdout
    report = json.loads(out.read_text())
    assert report["smoke"] is True and set(report["targets"]) == {"rss_per_worker_mb", "healthz_s", "installed_mb"}
    full, thin = report["profiles"]["full"], report["profiles"]["thin"]
    for profile in (full, thin):
        assert profile["worker"]["workers"] == 1
        assert profile["worker"]["requests"]["errors"] == 0, profile["worker"]["requests"]["error_kinds"]
        assert profile["healthz"]["median_s"] > 0 and profile["import"]["median_s"] > 0
        assert profile["worker"]["rss_mb"] > 0 and profile["installed"]["mb"] > 0
    # The readings are of real processes: today's gateway loads TensorFlow, the thin one does not.
    assert full["import"]["tensorflow_imported"] and full["worker"]["tensorflow_libraries"]
    assert not thin["import"]["tensorflow_imported"] and thin["worker"]["tensorflow_libraries"] == []
    assert "tensorflow" in full["installed"]["largest_mb"] and "tensorflow" not in thin["installed"]["largest_mb"]
    assert (full["image"]["target"], thin["image"]["target"]) == ("tools", "gateway")


def test_a_profile_is_sized_by_its_requirements_closure(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# the API's web stack\nflask==3.1.3\n", encoding="utf-8")
    total, sizes = footprint.installed_size(Path(sysconfig.get_path("purelib")), requirements)
    # Flask and what it pulls in (Werkzeug, Jinja2, MarkupSafe, ...), nothing else that is installed beside it.
    assert {"flask", "werkzeug", "jinja2", "markupsafe", "itsdangerous", "click", "blinker"} <= set(sizes)
    assert "numpy" not in sizes and "tensorflow" not in sizes
    assert total == sum(sizes.values()) > 1 << 20
    requirements.write_text("no-such-distribution-here==1.0\n", encoding="utf-8")
    with pytest.raises(LookupError, match="no-such-distribution-here"):
        footprint.installed_size(Path(sysconfig.get_path("purelib")), requirements)


def test_the_image_estimate_counts_what_the_dockerfile_copies() -> None:
    copied = footprint.dockerfile_app_files()
    app_only = sum(p.stat().st_size for p in (footprint.REPO / "app").rglob("*.py") if "__pycache__" not in p.parts)
    assert app_only < copied < 50 << 20, "the app, its templates and static files: a few MB"
