"""serving_models.config's version labels as the gateway reads them when TF Serving cannot say: parsed again only
when the file changes (the rollouts look at them every two seconds in every worker), one reader for the rollouts,
/api/v1/models and /v2/health/ready."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from app import create_app
from app.web import extensions
from app.web.extensions import ConfiguredLabels, serving


def _config(labels: dict[str, int]) -> str:
    entries = "".join(f'    version_labels {{ key: "{key}" value: {value} }}\n' for key, value in labels.items())
    return (
        "model_config_list {\n"
        '  config {\n    name: "gallery"\n    base_path: "/models/gallery"\n    model_platform: "tensorflow"\n'
        f"{entries}  }}\n"
        '  config {\n    name: "anime"\n    base_path: "/models/anime"\n    model_platform: "tensorflow"\n  }\n'
        "}\n"
    )


def _write(path: Path, text: str, mtime: float) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, (mtime, mtime))


@pytest.fixture
def parses(monkeypatch) -> list[Path]:
    """Every parse of a model config by the reader."""
    seen: list[Path] = []
    parse = extensions.load_model_config

    def counted(path, **options):
        seen.append(Path(path))
        return parse(path, **options)

    monkeypatch.setattr(extensions, "load_model_config", counted)
    return seen


def test_the_file_is_parsed_again_only_when_it_changes(tmp_path, parses, caplog):
    path = tmp_path / "serving_models.config"
    an_hour_ago = time.time() - 3600
    _write(path, _config({"stable": 1}), an_hour_ago)
    reader = ConfiguredLabels(path, None)
    for _ in range(3):
        assert reader.labels() == {"gallery": {"stable": 1}, "anime": {}}
    assert len(parses) == 1
    _write(path, _config({"stable": 1, "canary": 2}), an_hour_ago + 1)
    assert reader.labels() == {"gallery": {"stable": 1, "canary": 2}, "anime": {}}
    assert reader.labels() == {"gallery": {"stable": 1, "canary": 2}, "anime": {}}
    assert len(parses) == 2
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="app.web.extensions"):
        assert reader.labels() is None
        assert reader.labels() is None
    assert len(parses) == 3  # a file that is gone is not looked for again until it is back
    assert [record.getMessage() for record in caplog.records if "version labels are unknown" in record.getMessage()]
    assert len(caplog.records) == 1  # once per change, not once per look
    _write(path, _config({"stable": 2}), an_hour_ago + 2)
    assert reader.labels() == {"gallery": {"stable": 2}, "anime": {}}


def test_a_file_written_within_the_clock_tick_it_was_read_in_is_read_again(tmp_path, parses):
    # An edit that keeps the size within the same mtime tick would look unchanged: such a file is read at every look
    # until its mtime is two seconds old.
    path = tmp_path / "serving_models.config"
    _write(path, _config({"stable": 1}), time.time() + 60)
    reader = ConfiguredLabels(path, None)
    assert reader.labels() == {"gallery": {"stable": 1}, "anime": {}}
    stamp = path.stat()
    _write(path, _config({"stable": 2}), stamp.st_mtime)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert reader.labels() == {"gallery": {"stable": 2}, "anime": {}}
    assert len(parses) == 2


def test_with_tf_serving_the_labels_are_the_files(tmp_path, parses):
    path = tmp_path / "serving_models.config"
    _write(path, _config({"stable": 1}), time.time() - 3600)
    app = create_app({"backend": "grpc", "serving_target": "127.0.0.1:1", "model_config": path, "rate_limit": ""})
    try:
        for _ in range(3):  # no backend opened: TF Serving's API would not list them anyway
            assert serving(app).version_labels() == {"gallery": {"stable": 1}, "anime": {}}
        assert len(parses) == 1
    finally:
        serving(app).close()
