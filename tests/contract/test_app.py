"""The app factory, settings from the environment, and the operations endpoints on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from app.config import PROJECT_ROOT, Settings
from app.pipeline_config import load_pipeline_config
from app.serving.model_config import load_model_config


def test_settings_defaults_env_and_overrides():
    settings = Settings.load(
        {"timeout": 2.5, "GATEWAY_BACKEND": "grpc"},
        environ={"GATEWAY_MAX_ATTEMPTS": "5", "GATEWAY_WARMUP": "off", "GATEWAY_PIPELINE_CONFIG": "/etc/p.toml"},
    )
    assert settings.timeout == 2.5
    assert settings.backend == "grpc"
    assert settings.max_attempts == 5
    assert settings.warmup is False
    assert settings.pipeline_path() == Path("/etc/p.toml")
    defaults = Settings.load(environ={})
    assert defaults.backend == "local"
    assert defaults.pipeline_path() == defaults.model_config_file.parent / "pipeline.toml"


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"GATEWAY_BACKEND": "docker"}, "GATEWAY_BACKEND"),
        ({"GATEWAY_TIMEOUT": "soon"}, "GATEWAY_TIMEOUT"),
        ({"GATEWAY_TIMEOUT": "0"}, "positive"),
        ({"GATEWAY_WARMUP": "maybe"}, "GATEWAY_WARMUP"),
        ({"GATEWAY_MAX_ATTEMPTS": "0"}, "at least 1"),
    ],
)
def test_bad_settings_are_named(environ, words):
    with pytest.raises(ValueError, match=words):
        Settings.load(environ=environ)


def test_unknown_override_is_refused():
    with pytest.raises(ValueError, match="unknown gateway setting"):
        Settings.load({"timeuot": 1}, environ={})


def test_shipped_model_config_parses_and_names_the_pipeline():
    config = load_model_config(PROJECT_ROOT / "serving_models.config", check_paths=False)
    pipeline = load_pipeline_config(Settings().pipeline_path(), required=True)
    assert set(config.names) == set(pipeline.servables)
    assert all(s.configured_base_path.startswith("/models/") for s in config.servables)


@pytest.fixture(params=["local", "grpc"])
def app_over(request, config_path: Path):
    """An app whose backend serves the test servables, locally or through the protocol double."""
    from tests.support.double import TFServingDouble

    doubles = []

    def make(**settings):
        if request.param == "grpc":
            double = TFServingDouble(config_path, poll_interval=0).start()
            doubles.append(double)
            settings = {"backend": "grpc", "serving_target": double.address, **settings}
        else:
            settings = {"backend": "local", "model_config": config_path, "poll_interval": 0, **settings}
        app = create_app(settings)
        apps.append(app)
        return app

    apps: list = []
    yield make
    for app in apps:
        app.extensions["serving"].close()
    for double in doubles:
        double.close()


def test_healthz(app_over):
    response = app_over().test_client().get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def _pipeline_file(tmp_path: Path, **servables: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text("".join(f'[{stage}]\nservable = "{name}"\n' for stage, name in servables.items()), "utf-8")
    return path


def test_readyz_when_every_servable_is_available_but_does_not_fit(app_over, tmp_path):
    """Available is not enough: the test servables are up, but none has the tensors its stage needs."""
    pipeline = _pipeline_file(tmp_path, detect="half_plus", encode="words", search="words", translate="half_plus")
    client = app_over(pipeline_config=pipeline).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json["servables"]["half_plus"] == {"available": True, "versions": [2, 1]}  # newest first
    assert response.json["servables"]["words"]["available"] is True
    assert any(line.startswith("detect: [detect.inputs] image = 'input_images'") for line in response.json["misfits"])


def test_readyz_names_what_is_missing(app_over, tmp_path):
    # No servable of the test config is called face_detection, the detect stage's default.
    pipeline = _pipeline_file(tmp_path, encode="half_plus", search="half_plus", translate="half_plus")
    client = app_over(pipeline_config=pipeline).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert set(response.json["servables"]) == {"face_detection", "half_plus"}
    assert response.json["servables"]["face_detection"]["available"] is False
    assert "face_detection" in response.json["servables"]["face_detection"]["error"]
    assert response.json["servables"]["half_plus"]["available"] is True


def test_readyz_when_serving_is_down():
    app = create_app({"backend": "grpc", "serving_target": "127.0.0.1:1", "timeout": 1})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"
    assert response.json["servables"]["face_detection"]["available"] is False
    assert "connect" in response.json["servables"]["face_detection"]["error"]
    app.extensions["serving"].close()


def test_readyz_when_model_config_is_broken(tmp_path):
    broken = tmp_path / "serving_models.config"
    broken.write_text("model_config_list { config { name: 'x' base_path: '/nowhere' model_platform: 'tensorflow' } }")
    app = create_app({"backend": "local", "model_config": broken})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "/nowhere" in response.json["error"]
