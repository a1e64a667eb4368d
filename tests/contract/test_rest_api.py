"""TF Serving's REST API at the gateway, on both backends: the cases of http_rest_api_handler_test.cc (tag 2.20.0)
with the same expectations, then what a client meets beyond them (status codes, headers, strings and bytes,
classifiers with labels, the gateway's keys, limits and metrics).

Each test named after a case of that file sends its requests to the model it uses (saved_model_half_plus_two,
rebuilt by tests/support/model_api_servables.py) and checks its answer: the JSON (compared as JSON, as CompareJson
does), the status code ToHTTPStatusCode gives the gRPC code the case expects, and the message.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.support import model_api_servables as servables
from tests.support.model_api_servables import (
    HALF_PLUS_TWO,
    HALF_PLUS_TWO_LABEL,
    HALF_PLUS_TWO_VERSION,
    close_surface_app,
    serving_dir,
    surface_app_of,
)

# The fixtures this module uses, from the servables' module.
model_api_models = servables.model_api_models
surface_app = servables.surface_app

MODEL = f"/v1/models/{HALF_PLUS_TWO}"
JSON = "application/json"


@pytest.fixture
def client(surface_app):
    return surface_app.test_client()


def call(client, method: str, path: str, body: str | bytes | None = None, **kwargs):
    response = client.open(path, method=method, data=body, **kwargs)
    return response.status_code, response


def error_of(response) -> str:
    assert response.mimetype == JSON
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return body["error"]


def answer(client, method: str, path: str, body: str | None = None) -> dict:
    status, response = call(client, method, path, body)
    assert status == 200, response.get_data(as_text=True)
    assert response.mimetype == JSON  # HeaderList {{"Content-Type", "application/json"}}
    return json.loads(response.get_data(as_text=True))


# -- http_rest_api_handler_test.cc ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ],
)
def test_unsupported_api_calls(client, method, path, words):
    status, response = call(client, method, path, "")
    assert status == 400  # INVALID_ARGUMENT
    message = error_of(response)
    assert words in message
    if words == "Malformed request":
        assert message == f"Malformed request: {method} {path}"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v1/models/foo:predict", "Servable not found for request: Latest(foo)"),
        ("/v1/models/foo/versions/50:predict", "Servable not found for request: Specific(foo, 50)"),
        (f"{MODEL}99:predict", f"Servable not found for request: Latest({HALF_PLUS_TWO}99)"),
    ],
)
def test_predict_model_name_version_errors(client, path, message):
    status, response = call(client, "POST", path, '{ "instances": [1] }')
    assert status == 404  # NOT_FOUND
    assert error_of(response) == message


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        (f"{MODEL}:predict", "", "JSON Parse error: The document is empty"),
        (f"{MODEL}:predict", "instances = [1, 2]", "JSON Parse error: Expecting value at offset: 0"),
        (f"{MODEL}:predict", '{ "instances": ["x", "y"] }', "not of expected type: float"),
        (
            f"{MODEL}/labels/Version_Nonexistent:predict",
            '{ "instances": ["x", "y"] }',
            "Unrecognized servable version label",
        ),
        (f"{MODEL}:predict", '{ "signature_name": 100 }', "'signature_name' key must be a string value."),
    ],
)
def test_predict_request_errors(client, path, body, words):
    status, response = call(client, "POST", path, body)
    assert status == 400  # INVALID_ARGUMENT
    assert words in error_of(response)


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (f"{MODEL}:predict", '{"instances": [[1.0, 2.0], [3.0, 4.0]]}', {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        (f"{MODEL}/versions/{HALF_PLUS_TWO_VERSION}:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (f"{MODEL}/labels/{HALF_PLUS_TWO_LABEL}:predict", '{"instances": [1.0, 2.0]}', {"predictions": [2.5, 3.0]}),
        (
            f"{MODEL}/versions/{HALF_PLUS_TWO_VERSION}:predict",
            '{"signature_name": "serving_default", "instances": [3.0, 4.0]}',
            {"predictions": [3.5, 4.0]},
        ),
        (
            f"{MODEL}/versions/{HALF_PLUS_TWO_VERSION}:predict",
            '{"signature_name": "serving_default", "inputs": [3.0, 4.0]}',
            {"outputs": [3.5, 4.0]},
        ),
    ],
)
def test_predict(client, path, body, expected):
    assert answer(client, "POST", path, body) == expected


@pytest.mark.parametrize("pin", ["", f"/versions/{HALF_PLUS_TWO_VERSION}", f"/labels/{HALF_PLUS_TWO_LABEL}"])
def test_regress(client, pin):
    body = '{"signature_name": "regress_x_to_y", "examples": [ { "x": 80.0 } ] }'
    assert answer(client, "POST", f"{MODEL}{pin}:regress", body) == {"results": [42]}


@pytest.mark.parametrize(("pin", "x", "score"), [("", 20.0, 12), (f"/labels/{HALF_PLUS_TWO_LABEL}", 10.0, 7)])
def test_classify(client, pin, x, score):
    body = f'{{"signature_name": "classify_x_to_y", "examples": [ {{ "x": {x} }} ] }}'
    assert answer(client, "POST", f"{MODEL}{pin}:classify", body) == {"results": [[["", score]]]}


@pytest.mark.parametrize("pin", ["", f"/versions/{HALF_PLUS_TWO_VERSION}", f"/labels/{HALF_PLUS_TWO_LABEL}"])
def test_get_status(client, pin):
    assert answer(client, "GET", f"{MODEL}{pin}") == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def _tensor_info(name: str, dtype: str, dims: list[int] | None) -> dict:
    shape = (
        {"dim": [], "unknown_rank": True}
        if dims is None
        else {"dim": [{"size": str(size), "name": ""} for size in dims], "unknown_rank": False}
    )
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _signature(method: str, inputs: dict, outputs: dict) -> dict:
    return {"inputs": inputs, "outputs": outputs, "method_name": f"tensorflow/serving/{method}", "defaults": {}}


def test_get_model_metadata(client):
    """saved_model_half_plus_two_2_versions_metadata.json, the file the handler test compares with."""
    examples = _tensor_info("tf_example:0", "DT_STRING", None)

    def column(name: str) -> dict:
        return _tensor_info(name, "DT_FLOAT", [-1, 1])

    assert answer(client, "GET", f"{MODEL}/metadata") == {
        "model_spec": {"name": HALF_PLUS_TWO, "signature_name": "", "version": "123"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "regress_x2_to_y3": _signature("regress", {"inputs": column("x2:0")}, {"outputs": column("y3:0")}),
                    "serving_default": _signature("predict", {"x": column("x:0")}, {"y": column("y:0")}),
                    "classify_x_to_y": _signature("classify", {"inputs": examples}, {"scores": column("y:0")}),
                    "classify_x2_to_y3": _signature("classify", {"inputs": column("x2:0")}, {"scores": column("y3:0")}),
                    "regress_x_to_y2": _signature("regress", {"inputs": examples}, {"outputs": column("y2:0")}),
                    "regress_x_to_y": _signature("regress", {"inputs": examples}, {"outputs": column("y:0")}),
                }
            }
        },
    }


# -- beyond the handler test: what TF Serving answers, and the gateway around it ------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("GET", f"{MODEL}/versions/7", None, 404, f"Could not find version 7 of model {HALF_PLUS_TWO}"),
        ("GET", "/v1/models/nobody", None, 404, "Could not find any versions of model nobody"),
        (
            "GET",
            f"{MODEL}/versions/7/metadata",
            None,
            404,
            f"Servable not found for request: Specific({HALF_PLUS_TWO}, 7)",
        ),
        ("GET", "/v1/models/nobody/labels/x/metadata", None, 400, "Unrecognized servable version label: x"),
        (
            "POST",
            f"{MODEL}:predict",
            '{"signature_name": "nope", "inputs": [1]}',
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "POST",
            f"{MODEL}:regress",
            '{"signature_name": "nope", "examples": [{"x": 1.0}]}',
            400,
            "No signature was found with the name: nope",
        ),
        ("POST", f"{MODEL}:regress", '{"examples": [{"x": 1.0}]}', 400, "No regression inputs found in SignatureDef: "),
        (
            "POST",
            f"{MODEL}:classify",
            '{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}',
            400,
            'Expected classification signature outputs to contain at least one of "classes" or "scores".',
        ),
        ("POST", f"{MODEL}:predict", '{"inputs": {"x": [1.0], "z": [2.0]}}', 200, None),  # names not asked for: unread
        (
            "POST",
            "/v1/models/kinds:predict",
            '{"signature_name": "half", "inputs": [1]}',
            501,
            "Conversion of JSON Value: 1 to type: half",
        ),
        ("PUT", f"{MODEL}:predict", "{}", 400, f"Malformed request: PUT {MODEL}:predict"),
        ("POST", f"{MODEL}:PREDICT", '{"inputs": [1]}', 400, f"Malformed request: POST {MODEL}:PREDICT"),
        ("OPTIONS", f"{MODEL}:predict", None, 400, "Origin header is missing in CORS preflight"),
    ],
)
def test_tf_servings_codes_and_messages(client, method, path, body, status, message):
    got, response = call(client, method, path, body)
    assert got == status, response.get_data(as_text=True)
    if message is not None:
        assert error_of(response).startswith(message)


def test_paths_are_read_as_tf_serving_reads_them(client):
    # Case-insensitive patterns, percent-decoded names, the query left out, a label ignored by GetModelStatus.
    assert answer(client, "POST", f"/v1/MODELS/{HALF_PLUS_TWO}:predict", '{"inputs": [1.0]}') == {"outputs": [2.5]}
    encoded = HALF_PLUS_TWO.replace("_", "%5F")
    assert answer(client, "POST", f"/v1/models/{encoded}:predict?x=1", '{"inputs": [1.0]}') == {"outputs": [2.5]}
    versions = answer(client, "GET", f"{MODEL}/labels/no_such_label")["model_version_status"]
    assert [entry["version"] for entry in versions] == ["123"]
    status, response = call(client, "OPTIONS", f"{MODEL}:predict", headers={"Origin": "https://example.com"})
    assert (status, response.get_data()) == (200, b"")  # a CORS preflight with an origin
    status, response = call(client, "HEAD", MODEL)
    assert status == 400  # neither GET nor POST: "Malformed request"


def test_strings_and_bytes(client):
    rows = answer(client, "POST", "/v1/models/texts:predict", '{"instances": ["face", {"b64": "AP8="}]}')
    assert rows == {
        "predictions": [
            {"echo_bytes": {"b64": "ZmFjZQ=="}, "length": 4, "upper": "FACE"},
            {"echo_bytes": {"b64": "AP8="}, "length": 2, "upper": "\x00\ufffd"},  # not UTF-8: replaced; _bytes: b64
        ]
    }
    columns = answer(client, "POST", "/v1/models/texts:predict", '{"inputs": {"text": [["a", "<b>&"]]}}')
    assert columns["outputs"]["upper"] == [["A", "<B>&"]]
    assert columns["outputs"]["length"] == [[1, 4]]


def test_a_classifier_with_labels(client):
    body = '{"context": {"x": 0.0}, "examples": [{}, {}]}'  # every example takes x from the context
    results = answer(client, "POST", "/v1/models/classifier:classify", body)["results"]
    assert results == [[["low", 0.5], ["high", 0.5]], [["low", 0.5], ["high", 0.5]]]
    results = answer(client, "POST", "/v1/models/classifier:classify", '{"examples": [{"x": 2.0}]}')["results"]
    (low, high), = results  # fmt: skip
    assert low[0] == "low" and high[0] == "high" and math.isclose(high[1], 1 / (1 + math.exp(-2)), rel_tol=1e-6)
    status, response = call(client, "POST", "/v1/models/classifier:classify", '{"examples": [{"x": 2}]}')
    assert status == 400 and "Data types don't match" in error_of(response)  # an int64 feature where a float goes


@pytest.mark.parametrize(
    ("signature", "values", "expected"),
    [
        ("int8", [1, 300, -129], [1, 44, 127]),  # int_val cast to 8 bits, as Tensor::FromProto does
        ("uint64", [0, 18446744073709551615], [0, 18446744073709551615]),
        ("int64", [-9223372036854775808], [-9223372036854775808]),
        ("bool", [True, False], [True, False]),
        ("double", [0.1, 1e-300], [0.1, 1e-300]),
        ("float", [0.1, 1e39], [0.1, math.inf]),
    ],
)
def test_dtypes_through_the_model(client, signature, values, expected):
    body = json.dumps({"signature_name": signature, "inputs": values})
    assert answer(client, "POST", "/v1/models/kinds:predict", body) == {"outputs": expected}


def test_bad_bodies_never_a_server_error(client):
    for body in ["[", "{}", '{"inputs": {}}', '{"instances": [[], [1]]}', '{"inputs": [[1], [1, 2]]}', "\x00", '"x"']:
        status, response = call(client, "POST", f"{MODEL}:predict", body)
        assert status == 400, (body, response.get_data(as_text=True))
        error_of(response)


def test_deep_nesting_and_too_many_dimensions_are_bad_requests(client):
    """Nesting deeper than a request of a 64-dimension tensor needs is refused where it goes deeper (every level
    costs memory before anything could check it); a tensor of more dimensions than an array holds, before the model
    is asked. Both were a 500, and the first cost about 140 times the body in memory."""
    status, response = call(client, "POST", f"{MODEL}:predict", "[" * 1_000_000)
    assert status == 400
    assert error_of(response) == (
        "JSON Parse error: The document nests arrays and objects deeper than 67 levels; a tensor has at most 64 "
        "dimensions. at offset: 67"
    )
    status, response = call(client, "POST", f"{MODEL}:predict", '{"inputs": ' + "[" * 100 + "1.0" + "]" * 100 + "}")
    assert status == 400 and error_of(response).endswith("levels; a tensor has at most 64 dimensions. at offset: 77")
    for body, levels in (('{"inputs": %s}', 65), ('{"instances": %s}', 65), ('{"instances": [{"x": %s}]}', 64)):
        status, response = call(client, "POST", f"{MODEL}:predict", body % ("[" * levels + "1.0" + "]" * levels))
        assert status == 400, response.get_data(as_text=True)
        assert error_of(response).endswith("has too many dimensions: 65, at most 64 are supported")


def test_predict_is_typed_by_the_cached_metadata(surface_app, client, monkeypatch):
    """No GetModelMetadata per predict (the gRPC backend fills its cache once; the embedded one never asks); the
    metadata endpoint asks afresh each time. A signature the cache leaves out still answers as TF Serving does."""
    inner = surface_app.extensions["serving"].backend.inner
    asked, ask = [], inner.get_model_metadata
    monkeypatch.setattr(inner, "get_model_metadata", lambda ref: asked.append(ref) or ask(ref))
    for _ in range(3):
        assert answer(client, "POST", f"{MODEL}:predict", '{"instances": [1.0]}') == {"predictions": [2.5]}
    assert len(asked) <= 1, asked
    before = len(asked)
    answer(client, "GET", f"{MODEL}/metadata")
    answer(client, "GET", f"{MODEL}/metadata")
    assert len(asked) == before + 2
    # TF2's SavedModel has "__saved_model_init_op", which TF Serving finds, and which has no inputs.
    body = '{"signature_name": "__saved_model_init_op", "instances": ["a"]}'
    status, response = call(client, "POST", "/v1/models/texts:predict", body)
    assert status == 400 and error_of(response) == "Failed to get input map for signature: __saved_model_init_op"


def test_requests_are_counted_per_surface_servable_and_method(surface_app, client):
    answer(client, "GET", MODEL)
    call(client, "POST", "/v1/models/made-up:predict", "{}")
    text = client.get("/metrics").get_data(as_text=True)
    assert (
        'gateway_model_api_requests_total{method="status",servable="saved_model_half_plus_two_2_versions",'
        'status="200",surface="tfserving_rest"}' in text
    )
    assert 'method="predict",servable="made-up",status="404",surface="tfserving_rest"' in text
    assert (
        'gateway_servable_call_duration_seconds_count{call="status",servable="saved_model_half_plus_two_2_versions"}'
        in text
    )


# -- the gateway's own limits: keys, rate, size, deadlines ----------------------------------------------------------


@pytest.fixture
def small_app(tmp_path, model_api_models):
    app, double = surface_app_of(
        "local",
        serving_dir(tmp_path, model_api_models),
        api_keys=("k" * 24,),
        rate_limit="2/minute",
        max_upload_bytes=2000,
    )
    yield app
    close_surface_app(app, double)


def test_keys_limits_and_sizes_answer_in_tf_servings_error_format(small_app):
    client = small_app.test_client()
    key = {"X-API-Key": "k" * 24}
    status, response = call(client, "GET", MODEL)
    assert status == 401 and "needs a key" in error_of(response)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status, response = call(client, "POST", f"{MODEL}:regress", "[" + "1," * 2000 + "1]", headers=key)
    assert status == 413 and error_of(response) == "the request is larger than 2,000 bytes"
    assert call(client, "POST", f"{MODEL}:predict", '{"inputs": [1.0]}', headers=key)[0] == 200
    status, response = call(client, "POST", f"{MODEL}:predict", '{"inputs": [1.0]}', headers=key)
    assert status == 429 and "too many requests" in error_of(response) and int(response.headers["Retry-After"]) >= 1
    assert call(client, "GET", MODEL, headers=key)[0] == 200  # reading the status is not limited


def test_serving_down_and_slow_over_grpc(tmp_path, model_api_models):
    app, double = surface_app_of("grpc", serving_dir(tmp_path, model_api_models), timeout=0.5, max_attempts=1)
    try:
        client = app.test_client()
        double.delays[HALF_PLUS_TWO] = 1.5  # Predict only: the metadata read before it is prompt
        status, response = call(client, "POST", f"{MODEL}:predict", '{"inputs": [1.0]}')
        assert status == 504 and "no answer from TF Serving within 0.5s" in error_of(response)
        double.delays.clear()
        double.stop()
        status, response = call(client, "GET", f"{MODEL}/metadata")
        assert status == 503 and error_of(response)
        assert "Retry-After" in response.headers
    finally:
        close_surface_app(app, double)


def test_both_surfaces_are_in_the_openapi_document(surface_app, client):
    """Every documented /v1 and /v2 operation reaches its surface, and every /v2 route (but the catch-all) is
    documented. (/v1 is one catch-all route: TF Serving's patterns, documented path by path.)"""
    document = answer(client, "GET", "/api/v1/openapi.json")
    documented = {path: set(item) for path, item in document["paths"].items() if path.startswith(("/v1/", "/v2"))}
    assert {path for path in documented if path.startswith("/v1/")} == {
        f"/v1/models/{{model_name}}{pin}{tail}"
        for pin in ("", "/versions/{version}", "/labels/{label}")
        for tail in ("", "/metadata", ":predict", ":classify", ":regress")
    }
    adapter = surface_app.url_map.bind("localhost")
    samples = {"model_name": "m", "version": "1", "label": "stable", "model_version": "1"}
    for path, methods in documented.items():
        concrete = path.format(**samples)
        for method in methods:
            endpoint, _ = adapter.match(concrete, method=method.upper())
            assert endpoint.split(".")[0] in ("tfserving_rest", "inference_v2") and endpoint != "inference_v2.unknown"
    routes = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        .replace("{name}", "{model_name}")
        .replace("{version}", "{model_version}"): rule.methods - {"HEAD", "OPTIONS"}
        for rule in surface_app.url_map.iter_rules()
        if rule.endpoint.startswith("inference_v2.") and rule.endpoint != "inference_v2.unknown"
    }
    assert {
        path: {method.upper() for method in methods} for path, methods in documented.items() if path.startswith("/v2")
    } == {path.rstrip("/") or path: methods for path, methods in routes.items()}


def test_a_name_with_a_newline_is_tf_servings_business(client):
    status, response = call(client, "POST", "/v1/models/a%0Ab:predict", '{"inputs": [1]}')
    assert status == 404 and error_of(response) == "Servable not found for request: Latest(a\nb)"
