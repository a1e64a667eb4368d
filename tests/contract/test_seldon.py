"""Seldon's prediction protocol at the gateway, on both backends: ndarray, tensor, tftensor and jsonData requests,
answers in the request's kind with names and meta echoed, the same numbers as /v1 and /v2, Seldon's error shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.serving import tensors
from tests.support import model_api_servables as servables
from tests.support.model_api_servables import HALF_PLUS_TWO, close_surface_app, serving_dir, surface_app_of

model_api_models = servables.model_api_models
surface_app = servables.surface_app
PATH = f"/seldon/portrait/{HALF_PLUS_TWO}/api/v1.0/predictions"
KINDS = "/seldon/ns/kinds/api/v1.0/predictions"


@pytest.fixture
def client(surface_app):
    return surface_app.test_client()


def predict(client, body, path: str = PATH, status: int = 200) -> dict:
    response = client.post(path, data=json.dumps(body) if not isinstance(body, (str, bytes)) else body,
                           content_type="application/json")  # fmt: skip
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def test_an_ndarray_is_answered_as_an_ndarray_with_names_and_meta_echoed(client):
    body = {"data": {"names": ["x"], "ndarray": [[1.0], [2.5], [-4.0]]}, "meta": {"puid": "abc", "tags": {"t": 1}}}
    answer = predict(client, body)
    assert answer["data"] == {"names": ["x"], "ndarray": [[2.5], [3.25], [0.0]]}
    assert answer["meta"]["puid"] == "abc" and answer["meta"]["tags"] == {"t": 1}
    assert answer["meta"]["requestPath"] == {HALF_PLUS_TWO: "123"}
    made = predict(client, {"data": {"ndarray": [1.0]}})["meta"]["puid"]
    assert made and made != predict(client, {"data": {"ndarray": [1.0]}})["meta"]["puid"]  # one is made when absent


def test_a_tensor_is_answered_as_a_tensor(client):
    answer = predict(client, {"data": {"tensor": {"shape": [2, 2], "values": [0, 1, 2, 3]}}})
    assert answer["data"] == {"names": [], "tensor": {"shape": [2, 2], "values": [2.0, 2.5, 3.0, 3.5]}}


def test_a_tftensor_is_answered_as_a_tftensor(client):
    from google.protobuf import json_format

    proto = tensors.to_tensor_proto(np.array([[2.0, 4.0]], np.float32))
    answer = predict(client, {"data": {"tftensor": json_format.MessageToDict(proto)}})
    back = tensors.from_tensor_proto(json_format.ParseDict(answer["data"]["tftensor"], type(proto)()))
    np.testing.assert_array_equal(back, np.array([[3.0, 4.0]], np.float32))


def test_json_data_passes_through_to_tf_servings_rest_api(client):
    body = {"instances": [1.0, 2.0, 5.0], "signature_name": "serving_default"}
    answer = predict(client, {"jsonData": body, "meta": {"puid": "p"}})
    assert answer["jsonData"] == {"predictions": [2.5, 3.0, 4.5]}
    assert answer["meta"]["puid"] == "p"


def test_the_same_numbers_as_v1_and_v2(client):
    values = np.random.default_rng(3).standard_normal((4, 1)).astype(np.float32)
    seldon = predict(client, {"data": {"ndarray": values.tolist()}})["data"]["ndarray"]
    v1 = client.post(f"/v1/models/{HALF_PLUS_TWO}:predict", json={"instances": values.tolist()}).get_json()
    v2 = client.post(
        f"/v2/models/{HALF_PLUS_TWO}/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 1], "data": values.ravel().tolist()}]},
    ).get_json()
    as_float32 = np.asarray(seldon, np.float32)
    np.testing.assert_array_equal(as_float32, np.asarray(v1["predictions"], np.float32))
    np.testing.assert_array_equal(as_float32.ravel(), np.asarray(v2["outputs"][0]["data"], np.float32))


def test_the_proxy_parameters_choose_signature_input_and_output(client):
    path = "/seldon/ns/kinds/api/v1.0/predictions?signature_name=int32&model_input=x&model_output=y"
    assert predict(client, {"data": {"ndarray": [1, -2, 2147483647]}}, path)["data"]["ndarray"] == [1, -2, 2147483647]
    # SeldonClient sends every number as a double: a whole one fits an integer input.
    doubles = {"data": {"tensor": {"shape": [2], "values": [3.0, -7.0]}}}
    assert predict(client, doubles, path)["data"]["tensor"] == {"shape": [2], "values": [3, -7]}
    strings = predict(
        client, {"data": {"ndarray": ["a", "ü"]}}, "/seldon/ns/kinds/api/v1.0/predictions?signature_name=string"
    )
    assert strings["data"]["ndarray"] == ["a", "ü"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        (PATH, "{not json", 400, "Invalid JSON"),
        (PATH, {"data": {"ndarray": [[1.0], [2.0, 3.0]]}}, 400, "not rectangular"),
        (PATH, {"data": {"ndarray": [1.0], "tensor": {"shape": [1], "values": [1.0]}}}, 400, "exactly one of"),
        (PATH, {"data": {"tensor": {"shape": [3], "values": [1.0]}}}, 400, "holds 3 values, not 1"),
        (PATH, {"data": {"ndarray": ["a"]}}, 400, "is not a value of the model's input (float32)"),
        (PATH, {"strData": "hello"}, 400, "strData and binData are not supported"),
        (PATH, {}, 400, "exactly one of data and jsonData"),
        (PATH, {"data": {"ndarray": [1.0]}, "extra": 1}, 400, "extra"),
        (PATH, {"jsonData": {"instances": [[1.0]], "inputs": [1.0]}}, 400, "instances"),
        (PATH + "?model_output=nope", {"data": {"ndarray": [1.0]}}, 400, "no output 'nope'"),
        (PATH + "?signature_name=nope", {"data": {"ndarray": [1.0]}}, 404, "no signature 'nope'"),
        (PATH + "?model_inputs=x", {"data": {"ndarray": [1.0]}}, 400, "model_inputs"),
        ("/seldon/ns/no_such_model/api/v1.0/predictions", {"data": {"ndarray": [1.0]}}, 404, "no_such_model"),
        ("/api/v1.0/predictions", {"data": {"ndarray": [1.0]}}, 404, "GATEWAY_SELDON_SERVABLE"),
        ("/seldon/ns/x/api/v9/predictions", {"data": {"ndarray": [1.0]}}, 404, "no such endpoint"),
        (
            "/seldon/ns/kinds/api/v1.0/predictions?signature_name=int8",
            {"data": {"ndarray": [300]}},
            400,
            "out of the range",
        ),
    ],
)
def test_errors_come_in_seldons_shape(client, path, body, status, words):
    answer = predict(client, body, path, status)
    assert set(answer) == {"status"}
    assert answer["status"]["status"] == "FAILURE" and answer["status"]["code"] == status
    assert answer["status"]["reason"] == "MICROSERVICE_BAD_DATA"
    assert words in answer["status"]["info"]


def test_the_default_servable_answers_api_v1_0_predictions(tmp_path, model_api_models):
    config = serving_dir(tmp_path, model_api_models)
    app, double = surface_app_of("local", config, seldon_servable=HALF_PLUS_TWO)
    try:
        answer = predict(app.test_client(), {"data": {"ndarray": [2.0]}}, "/api/v1.0/predictions")
    finally:
        close_surface_app(app, double)
    assert answer["data"]["ndarray"] == [3.0]


def test_keys_rate_limit_and_metrics_are_the_other_surfaces(tmp_path, model_api_models):
    key = "seldon-key-0123456789"
    config = serving_dir(tmp_path, model_api_models)
    app, double = surface_app_of("local", config, api_keys=(key,), rate_limit="2/hour")
    try:
        client = app.test_client()
        refused = client.post(PATH, json={"data": {"ndarray": [1.0]}})
        assert refused.status_code == 401 and refused.get_json()["status"]["reason"] == "MICROSERVICE_BAD_DATA"
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(2):
            assert client.post(PATH, json={"data": {"ndarray": [1.0]}}, headers=headers).status_code == 200
        limited = client.post(PATH, json={"data": {"ndarray": [1.0]}}, headers=headers)
        assert limited.status_code == 429 and limited.get_json()["status"]["status"] == "FAILURE"
        metrics = client.get("/metrics").get_data(as_text=True)
        counted = f'method="predict",servable="{HALF_PLUS_TWO}",status="200",surface="seldon"'
        assert f"gateway_model_api_requests_total{{{counted}}} 2.0" in metrics
    finally:
        close_surface_app(app, double)


def test_another_method_is_a_405_in_seldons_shape(client):
    response = client.get(PATH)
    assert response.status_code == 405 and response.get_json()["status"]["status"] == "FAILURE"


def test_the_document_describes_it(client):
    document = client.get("/api/v1/openapi.json").get_json()
    operation = document["paths"]["/seldon/{namespace}/{model_name}/api/v1.0/predictions"]["post"]
    assert operation["tags"] == ["seldon"] and "requestBody" in operation
    assert {parameter["name"] for parameter in operation["parameters"]} >= {"namespace", "model_name", "model_input"}
