"""Route declarations: every route is declared, the flags that guard them, the document generated from them, the
answer models' rule for absent keys, and the one version-label pattern."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from openapi_spec_validator import validate
from pydantic import ValidationError

from app import create_app
from app.pipeline_config import arm_pin
from app.serving.base import ModelRef, is_label
from app.views import answers, openapi
from app.views.params import SearchParams
from app.web.operations import route_of


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    """An app that is built and never serves: no model server behind it (nothing here reaches one)."""
    built = create_app(
        {
            "backend": "grpc",
            "serving_target": "127.0.0.1:1",
            "api_keys": ("k3y-0123456789abcdef",),
            "rate_limit": "5/hour",
        }
    )
    yield built
    built.extensions["serving"].close()


def _routes(app: Flask) -> dict[str, object]:
    return {rule.endpoint: route_of(app.view_functions[rule.endpoint]) for rule in app.url_map.iter_rules()}


def test_every_rule_is_declared_but_the_static_files(app: Flask) -> None:
    undeclared = sorted(endpoint for endpoint, route in _routes(app).items() if route is None)
    assert undeclared == ["static"]


def test_the_keys_and_the_rate_limit_guard_what_the_declarations_say(app: Flask) -> None:
    """The routes that need a key, and those the rate limit counts: a change here is a change of the security."""
    routes = _routes(app)
    keyed = {endpoint for endpoint, route in routes.items() if route is not None and route.needs_key}
    limited = {endpoint for endpoint, route in routes.items() if route is not None and route.rate_limited}
    assert keyed == {
        "api.search", "api.translate", "api.detect", "api.models", "api.unknown",
        "tfserving_rest.read", "tfserving_rest.run", "tfserving_rest.other",
        "inference_v2.server_metadata", "inference_v2.model_metadata", "inference_v2.model_ready",
        "inference_v2.infer", "inference_v2.unknown", "seldon.predict", "seldon.unknown",
    }  # fmt: skip
    assert limited == {
        "api.search",
        "api.translate",
        "api.detect",
        "pages.detect_face",
        "tfserving_rest.run",
        "inference_v2.infer",
        "seldon.predict",
    }
    # The limit is for what a client can make expensive: every limited route runs models, and the other way round.
    runs_models = {endpoint for endpoint, route in routes.items() if route is not None and route.runs_models}
    assert runs_models == limited


def test_the_guards_follow_the_declarations(app: Flask) -> None:
    client = app.test_client()
    # Declared needs_key: 401 without a key, an unknown API path included (it does not tell that it is unknown).
    for method, path in [("POST", "/api/v1/detect"), ("GET", "/api/v1/no-such-thing"), ("GET", "/v2"), ("GET", "/v1/")]:
        assert client.open(path, method=method).status_code == 401, path
    # Declared open: the page, health, the document; undeclared: the static files and unmatched paths.
    for path in ("/", "/healthz", "/api/v1/openapi.json", "/static/style.css", "/v2/health/live", "/no/such/page"):
        with client.get(path) as response:
            assert response.status_code == (404 if path == "/no/such/page" else 200), path
    limited = [client.post("/detect_face/image", data=b"x", content_type="text/plain") for _ in range(6)]
    assert [response.status_code for response in limited] == [415] * 5 + [429]
    assert client.get("/healthz").status_code == 200  # not counted


def test_the_document_is_generated_valid_and_its_ids_unique(app: Flask) -> None:
    document = openapi.document(app)
    validate(document)
    ids = [operation["operationId"] for item in document["paths"].values() for operation in item.values()]
    assert len(ids) == len(set(ids))
    search = document["paths"]["/api/v1/search"]["post"]
    assert {"401", "429", "422"} <= set(search["responses"]) and search["x-runs-models"] is True
    assert document["paths"]["/healthz"]["get"]["security"] == []
    # Every documented path and method reaches the route that declares the operation.
    adapter = app.url_map.bind("localhost")
    samples = {"name": "a.png", "model_name": "m", "model_version": "1", "version": "1", "label": "l", "namespace": "n"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            endpoint, _ = adapter.match(path.format(**samples), method=method.upper())
            declared = route_of(app.view_functions[endpoint]).operations
            assert any(operation["operationId"].startswith(op.operation_id) for op in declared), (path, endpoint)


def test_the_schemas_are_the_answer_models(app: Flask) -> None:
    schemas = openapi.document(app)["components"]["schemas"]
    search = schemas["SearchResult"]
    # An optional key is absent, never null; a key that may be null is required and nullable.
    assert "crop_jpeg_base64" not in search["required"] and "nullable" not in search["properties"]["crop_jpeg_base64"]
    assert "gallery_version" in search["required"] and search["properties"]["gallery_version"]["nullable"] is True
    assert search["additionalProperties"] is False
    # A property named like a schema keyword is a property (ExamplesRequest's "examples").
    assert "examples" in schemas["ExamplesRequest"]["properties"]
    assert schemas["Health"]["properties"]["status"]["enum"] == ["ok"]


def test_an_answer_leaves_out_what_has_no_value_and_refuses_what_is_not_declared() -> None:
    face = answers.Face(box=answers.Box(ymin=0.1, xmin=0.2, ymax=0.3, xmax=0.4), score=0.9)
    assert face.body() == {"box": {"ymin": 0.1, "xmin": 0.2, "ymax": 0.3, "xmax": 0.4}, "score": 0.9}
    result = answers.SearchResult(
        face=face, faces=[face], image=answers.ImageSize(width=2, height=1), timings_ms={}, arms={}, matches=[],
        gallery_version=None,
    )  # fmt: skip
    body = result.body()
    assert body["gallery_version"] is None and "crop_jpeg_base64" not in body and "anime_png_base64" not in body
    readiness = answers.Readiness(status="unavailable", model_config=answers.ModelConfigReport(refused="bad"))
    assert readiness.body() == {"status": "unavailable", "model_config": {"refused": "bad"}}
    with pytest.raises(ValidationError):
        answers.Health(status="ok", extra=1)


@pytest.mark.parametrize(
    ("text", "valid"),
    [("stable", True), ("canary-2.1_x", True), ("a" * 64, True), ("a" * 65, False), ("", False), ("a b", False),
     ("stable\n", False), ("../etc", False), ("ключ", False)],
)  # fmt: skip
def test_one_label_rule_everywhere(text: str, valid: bool) -> None:
    """A request's label, a path's, a rollout arm's and ModelRef's: one pattern, matched whole."""
    assert is_label(text) is valid
    assert SearchParams.model_validate({"label": text}).label == text if valid else _refused(SearchParams, text)
    if valid:
        ModelRef("m", label=text)
        assert arm_pin(text) == (None, text) or text.isdigit()
    else:
        with pytest.raises(Exception):  # noqa: B017  # BadInput and ValueError, each in its own words
            ModelRef("m", label=text)
        with pytest.raises(ValueError):
            arm_pin(text)


def _refused(model: type, label: str) -> bool:
    with pytest.raises(ValidationError):
        model.model_validate({"label": label})
    return True
