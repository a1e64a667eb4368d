"""A quiet start: the gateway says what it serves and where it listens; TensorFlow's start-up noise stays out."""

from __future__ import annotations

import pytest

from tests.support import harness
from tests.support.gateway import demo_serving_dir


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_gunicorn_start_on_the_embedded_backend(tmp_path, demo_root, level):
    config = demo_serving_dir(tmp_path, demo_root)
    env = {"GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_LOG_LEVEL": level, "GATEWAY_WORKERS": "1"}
    with harness.gunicorn("quiet", "app:create_app()", env, tmp_path) as server:
        log = server.log_tail(100_000)
    assert f"Listening at: http://127.0.0.1:{server.port}" in log
    assert f"serving from the embedded runtime over {config}" in log
    assert "detect=face_detection v1" in log
    noise = ("cuInit", "I0000", "All log messages before absl::InitializeLog", "is deprecated and will be removed")
    if level == "INFO":
        assert not [line for line in log.splitlines() if any(word in line for word in noise)]
    else:  # the user asked for everything: TensorFlow's own lines are passed on
        assert "oneDNN" in log or "cuInit" in log or "cuda" in log.lower()
