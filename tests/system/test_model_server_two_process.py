"""Docker's topology without Docker (docs/model-server.md): `python -m app.model_server` over the demo servables, and
the gateway under gunicorn as its gRPC client (GATEWAY_BACKEND=grpc), two processes on loopback, a photo through both.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.support import harness
from tests.support.gateway import demo_serving_dir
from tests.support.model_server import model_server

pytestmark = pytest.mark.slow


def model_server_config(config: Path, models_root: Path) -> Path:
    """serving_models.config with its /models/ base paths made real ones, as `make model-server` writes it."""
    found = config.with_name("serving_models.model-server.config")
    found.write_text(config.read_text(encoding="utf-8").replace('"/models/', f'"{models_root}/'), encoding="utf-8")
    return found


def test_a_photo_through_the_gateway_and_the_model_server(demo_root: Path, tmp_path: Path):
    config = demo_serving_dir(tmp_path, demo_root)
    models_root = tmp_path / "serving_models"
    arguments = [
        f"--model_config_file={model_server_config(config, models_root)}",
        "--allow_version_labels_for_unavailable_models=true",
    ]
    with model_server(arguments, tmp_path) as server:
        gateway_env = {
            "GATEWAY_BACKEND": "grpc",
            "GATEWAY_SERVING_TARGET": f"localhost:{server.grpc_port}",
            "GATEWAY_MODEL_CONFIG": str(config),
            "GATEWAY_MODELS_ROOT": str(models_root),
            "GATEWAY_RATE_LIMIT": "",
        }
        with harness.gunicorn("gateway", "app:create_app()", gateway_env, tmp_path, ready_timeout=120) as gateway:
            photo = harness.astronaut_jpeg(0.5)
            status, body = call(gateway, "POST", "/api/v1/search?k=3", photo, {"Content-Type": "image/jpeg"})
            assert status == 200, body[:500]
            answer = json.loads(body)
            assert len(answer["matches"]) == 3
            assert answer["gallery_version"] is not None

            form, content_type = harness.multipart({"k": "3"}, {"image_file": ("a.jpg", photo, "image/jpeg")})
            status, page = call(gateway, "POST", "/detect_face/image", form, {"Content-Type": content_type})
            assert status == 200, page[:500]
            assert b"<img" in page

            status, models = call(gateway, "GET", "/api/v1/models")
            assert status == 200
            assert b"face_detection" in models and b"latent_search_model" in models
        # Beside the gRPC port the gateway uses, the REST port answers TF Serving's status API for the same servables.
        status, versions = server.rest("GET", "/v1/models/face_detection")
        assert status == 200 and versions["model_version_status"][0]["state"] == "AVAILABLE"


def call(server: harness.Server, method: str, path: str, body: bytes | None = None, headers=None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
