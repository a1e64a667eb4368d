"""The OpenAPI document: a valid OpenAPI 3 description of every API route, and the app fuzzed against it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from app.views import openapi
from tests.support.gateway import demo_serving_dir

PHOTO_OPERATIONS = ("/api/v1/search", "/api/v1/translate", "/api/v1/detect")


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory, demo_root) -> Iterator[Flask]:
    """The demo app on the local backend only: the fuzzing is about the HTTP surface, not the transport."""
    config = demo_serving_dir(tmp_path_factory.mktemp("openapi-app"), demo_root)
    app = create_app({"model_config": config, "poll_interval": 0, "warmup": False, "rate_limit": ""})  # fuzzing
    app.config["TESTING"] = True
    yield app
    app.extensions["serving"].close()


@pytest.fixture(scope="module")
def document(local_app: Flask) -> dict:
    response = local_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.json


def test_document_is_valid_openapi(document):
    validate(document)
    assert document["openapi"].startswith("3.")


def test_document_describes_every_route(local_app, document):
    """Every route of the API and of operations is documented, with its methods, and nothing else is (but the
    catch-all that answers unknown API paths)."""
    routes = {}
    for rule in local_app.url_map.iter_rules():
        surface = rule.rule.startswith(("/api/", "/seldon/")) and "<everything:" not in rule.rule
        if surface or rule.rule in ("/healthz", "/readyz"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    # The model surfaces (/v1, /v2) are checked against their own routes in tests/contract/test_rest_api.py.
    documented = {path: set(item) for path, item in document["paths"].items() if not path.startswith(("/v1/", "/v2"))}
    assert documented == routes


def test_photo_operations_document_inputs_and_errors(document):
    for path in PHOTO_OPERATIONS:
        operation = document["paths"][path]["post"]
        body = _resolve(document, operation["requestBody"])
        assert body["required"] is True
        assert set(body["content"]) == {"multipart/form-data", "image/jpeg", "image/png", "image/webp", "image/bmp"}
        form = body["content"]["multipart/form-data"]["schema"]
        assert form["required"] == ["image_file"]
        names = {_resolve(document, p)["name"] for p in operation["parameters"]}
        assert {"version", "label", "detect_version", "detect_label"} <= names
        # The same parameters may come as form fields beside the photo.
        assert set(form["properties"]) == names | {"image_file"}
        assert {"400", "404", "413", "415", "503", "504"} <= set(operation["responses"])
        assert "Server-Timing" in operation["responses"]["200"]["headers"]
    assert "422" in document["paths"]["/api/v1/search"]["post"]["responses"]
    assert "422" not in document["paths"]["/api/v1/detect"]["post"]["responses"]
    search = document["paths"]["/api/v1/search"]["post"]
    k = next(p for p in search["parameters"] if p["name"] == "k")["schema"]
    assert (k["minimum"], k["maximum"], k["default"]) == (1, 100, 5)
    error = document["components"]["schemas"]["Error"]
    assert _resolve(document, error["properties"]["error"])["required"] == ["code", "message"]
    unavailable = document["components"]["responses"]["ServingUnavailable"]
    assert "Retry-After" in unavailable["headers"]


def _resolve(document: dict, item: dict) -> dict:
    while "$ref" in item:
        node = document
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item


# -- fuzzing the app against its own document ------------------------------------------------------


def _documented_operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, from an app that is built but never serves (cheap)."""
    app = create_app({"rate_limit": ""})
    try:
        return [(method.upper(), path) for path, item in openapi.document(app)["paths"].items() for method in item]
    finally:
        app.extensions["serving"].close()


OPERATIONS = _documented_operations()
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(local_app: Flask):
    # An explicit config: no schemathesis.toml found on disk changes what this test does.
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", local_app, config=schemathesis.Config())


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzzed_requests_get_no_server_error(api_schema, method, path):
    """Valid and invalid requests alike: never a 5xx, and every answer is one the document describes."""
    # Driven by hand rather than by schemathesis' pytest plugin, whose lazy loader does not run on pytest 9.
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        case.call_and_validate(checks=CHECKS)

    check()
