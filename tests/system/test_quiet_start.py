"""A quiet start: the gateway says what it serves and where it listens; TensorFlow's start-up noise stays out."""

from __future__ import annotations

import pytest

from tests.support import harness
from tests.support.gateway import demo_serving_dir


@pytest.mark.long(minutes=2.5)
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


@pytest.mark.slow
@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_the_model_commands_print_their_own_lines(tmp_path, demo_root, level):
    """check-models and build-index say what they did; the servables' loading and TensorFlow's notices show only
    at GATEWAY_LOG_LEVEL=DEBUG."""
    import subprocess
    import sys
    from pathlib import Path

    config = demo_serving_dir(tmp_path, demo_root)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_portrait())
    env = {"GATEWAY_MODEL_CONFIG": str(config), "GATEWAY_LOG_LEVEL": level, "PATH": "/usr/bin:/bin"}
    flask = str(Path(sys.executable).with_name("flask"))
    outputs = []
    for args in (["check-models", "--no-request"], ["build-index", "--add", str(photos)]):
        done = subprocess.run([flask, "--app", "app", *args], capture_output=True, text=True, env=env, timeout=300,
                              cwd=harness.REPO)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout + done.stderr)
    check, build = outputs
    assert "every stage fits" in check and "added 1 faces" in build
    chatter = ("Successfully loaded servable", "cuInit", "I0000", "is deprecated", "WARNING:tensorflow")
    said = [line for text in outputs for line in text.splitlines() if any(word in line for word in chatter)]
    if level == "INFO":
        assert said == []
    else:
        assert any("Successfully loaded servable" in line for line in said)


def _portrait() -> bytes:
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
