"""The Open Inference Protocol (KServe v2) at the gateway, on both backends: health, metadata, readiness, and
inference with typed tensors, as kserve/open-inference-protocol's inference_rest.md describes them; errors
as ``{"error": "<message>"}`` with an HTTP error status, never a 500."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from app.errors import BadInput
from app.protocols import v2_tensors
from app.serving import tensors
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
JSON = "application/json"


@pytest.fixture
def client(surface_app):
    return surface_app.test_client()


def get(client, path: str, status: int = 200) -> dict:
    response = client.get(path)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == JSON
    return response.get_json()


def infer(client, path: str, request: dict | str | bytes, status: int = 200) -> dict:
    body = json.dumps(request) if isinstance(request, dict) else request
    response = client.post(path, data=body, content_type=JSON)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == JSON
    return response.get_json()


def tensor(name: str, datatype: str, shape: list[int], data: list, **parameters) -> dict:
    item = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    return item | ({"parameters": parameters} if parameters else {})


def test_server_metadata_and_health(client):
    assert (
        get(client, "/v2")
        == get(client, "/v2/")
        == {"name": "portrait-gateway", "version": "1.0.0", "extensions": ["binary_tensor_data"]}
    )
    assert get(client, "/v2/health/live") == {"live": True}
    assert get(client, "/v2/health/ready") == {"live": True, "ready": True}


def test_model_metadata(client):
    assert get(client, "/v2/models/texts") == {
        "name": "texts",
        "versions": ["1"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "echo_bytes", "datatype": "BYTES", "shape": [-1]},
            {"name": "length", "datatype": "INT32", "shape": [-1]},
            {"name": "upper", "datatype": "BYTES", "shape": [-1]},
        ],
    }
    pinned = get(client, f"/v2/models/{HALF_PLUS_TWO}/versions/{HALF_PLUS_TWO_VERSION}")
    labelled = get(client, f"/v2/models/{HALF_PLUS_TWO}/versions/{HALF_PLUS_TWO_LABEL}")
    assert pinned == labelled and pinned["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 1]}]
    assert pinned["versions"] == ["123"]


def test_model_readiness(client):
    assert get(client, "/v2/models/texts/ready") == {"name": "texts", "ready": True}
    assert get(client, f"/v2/models/{HALF_PLUS_TWO}/versions/{HALF_PLUS_TWO_LABEL}/ready")["ready"] is True
    assert get(client, "/v2/models/texts/versions/9/ready", status=503) == {"name": "texts", "ready": False}
    assert get(client, "/v2/models/texts/versions/nolabel/ready", status=503) == {"name": "texts", "ready": False}
    assert "Could not find any versions of model nobody" in get(client, "/v2/models/nobody/ready", status=404)["error"]


def test_infer_typed_tensors(client):
    request = {"id": "42", "inputs": [tensor("x", "FP32", [2, 2], [[1, 2], [3, 4]])], "outputs": [{"name": "y"}]}
    answer = infer(client, f"/v2/models/{HALF_PLUS_TWO}/infer", request)
    assert answer == {
        "model_name": HALF_PLUS_TWO,
        "model_version": "123",
        "id": "42",
        "outputs": [{"name": "y", "shape": [2, 2], "datatype": "FP32", "data": [2.5, 3.0, 3.5, 4.0]}],
    }
    flat = {"inputs": [tensor("x", "FP32", [2, 2], [1, 2, 3, 4])]}
    assert (
        infer(client, f"/v2/models/{HALF_PLUS_TWO}/versions/{HALF_PLUS_TWO_LABEL}/infer", flat)["outputs"]
        == (answer["outputs"])
    )


def test_infer_strings_and_bytes(client):
    request = {"inputs": [tensor("text", "BYTES", [2], ["face", "AP8="], content_type="base64")]}
    # "face" is not base64 of anything printable: decoded it is 0x7d 0xa7 0x1e; the second is 0x00 0xff.
    outputs = {item["name"]: item for item in infer(client, "/v2/models/texts/infer", request)["outputs"]}
    assert outputs["length"] == {"name": "length", "shape": [2], "datatype": "INT32", "data": [3, 2]}
    echoed = outputs["echo_bytes"]
    assert echoed["parameters"] == {"content_type": "base64"}
    assert [base64.b64decode(item) for item in echoed["data"]] == [base64.b64decode("face"), b"\x00\xff"]
    plain = infer(client, "/v2/models/texts/infer", {"inputs": [tensor("text", "BYTES", [1], ["gallery"])]})
    assert {item["name"]: item["data"] for item in plain["outputs"]}["upper"] == ["GALLERY"]


@pytest.mark.parametrize(
    ("signature", "datatype", "data", "expected"),
    [
        ("int8", "INT8", [1, -128, 127], [1, -128, 127]),
        ("uint64", "UINT64", [0, 18446744073709551615], [0, 18446744073709551615]),
        ("bool", "BOOL", [True, False], [True, False]),
        ("double", "FP64", [0.1, 1e-300], [0.1, 1e-300]),
        ("half", "FP16", [0.5, 65504], [0.5, 65504.0]),
        ("uint16", "UINT16", [0, 65535], [0, 65535]),
    ],
)
def test_infer_every_datatype(client, signature, datatype, data, expected):
    request = {"parameters": {"signature_name": signature}, "inputs": [tensor("x", datatype, [len(data)], data)]}
    (output,) = infer(client, "/v2/models/kinds/infer", request)["outputs"]
    assert output == {"name": "y", "shape": [len(data)], "datatype": datatype, "data": expected}


@pytest.mark.parametrize(
    ("path", "request_body", "status", "words"),
    [
        ("/v2/models/kinds/infer", "{bad", 400, "Invalid JSON"),
        ("/v2/models/kinds/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/kinds/infer", {"inputs": [tensor("x", "FLOAT", [1], [1])]}, 400, "datatype"),
        (
            "/v2/models/kinds/infer",
            {"inputs": [tensor("x", "FP32", [2, 2], [1, 2, 3])]},
            400,
            "data holds 3 values, shape [2, 2] needs 4",
        ),
        ("/v2/models/kinds/infer", {"inputs": [tensor("x", "FP32", [2, 2], [[1, 2], [3]])]}, 400, "nested data"),
        ("/v2/models/kinds/infer", {"inputs": [tensor("x", "FP64", [1], [1])]}, 400, "'x' of kinds is FP32, not FP64"),
        ("/v2/models/kinds/infer", {"inputs": [tensor("x", "FP32", [1], ["1"])]}, 400, "must be numbers"),
        (
            "/v2/models/kinds/infer",
            {"parameters": {"signature_name": "int8"}, "inputs": [tensor("x", "INT8", [1], [300])]},
            400,
            "INT8 holds values from -128 to 127",
        ),
        ("/v2/models/kinds/infer", {"inputs": [tensor("z", "FP32", [1], [1])]}, 400, "no input 'z'"),
        (
            "/v2/models/kinds/infer",
            {"inputs": [tensor("x", "FP32", [1], [1])], "outputs": [{"name": "w"}]},
            400,
            "no output 'w'",
        ),
        (
            "/v2/models/kinds/infer",
            {"parameters": {"signature_name": "nope"}, "inputs": [tensor("x", "FP32", [1], [1])]},
            404,
            "has no signature 'nope'",
        ),
        ("/v2/models/kinds/infer", {"inputs": [tensor("x", "FP32", [1], [1])], "extra": 1}, 400, "extra"),
        ("/v2/models/nobody/infer", {"inputs": [tensor("x", "FP32", [1], [1])]}, 404, "Servable not found"),
        ("/v2/models/kinds/versions/7/infer", {"inputs": [tensor("x", "FP32", [1], [1])]}, 404, "Specific(kinds, 7)"),
        (
            "/v2/models/kinds/versions/nolabel/infer",
            {"inputs": [tensor("x", "FP32", [1], [1])]},
            404,
            "Unrecognized servable version label: nolabel",
        ),
        (
            "/v2/models/kinds/versions/no%20label/infer",
            {"inputs": [tensor("x", "FP32", [1], [1])]},
            400,
            "neither a version number nor a version label",
        ),
    ],
)
def test_infer_errors(client, path, request_body, status, words):
    message = infer(client, path, request_body, status=status)["error"]
    assert words in message


@pytest.mark.parametrize(
    ("shape", "data", "words"),
    [
        ([1] * 65, [1], "inputs.0.shape: List should have at most 64 items after validation, not 65"),
        ([1] * 70, [[[1]]], "inputs.0.shape: List should have at most 64 items after validation, not 70"),
        ([0, 10**20], [], "inputs.0.shape.1: Input should be less than or equal to 9223372036854775807"),
        ([0, 2**62, 4], [], "input 'x': shape [0, 4611686018427387904, 4] is too large for an array"),
        ([2**62, 2**62], [], "input 'x': data holds 0 values, shape [4611686018427387904, 4611686018427387904] needs"),
    ],
)
def test_shapes_no_array_can_have_are_bad_requests(client, shape, data, words):
    """More dimensions than an array holds, a dimension past int64, an empty tensor too big for an array: the first
    four were a 500 (numpy's ValueError)."""
    message = infer(client, "/v2/models/kinds/infer", {"inputs": [tensor("x", "FP32", shape, data)]}, status=400)
    assert message["error"].startswith(words)


def test_the_biggest_shapes_an_array_holds_are_served(client):
    (output,) = infer(client, "/v2/models/kinds/infer", {"inputs": [tensor("x", "FP32", [1] * 64, [7])]})["outputs"]
    assert output == {"name": "y", "shape": [1] * 64, "datatype": "FP32", "data": [7.0]}
    empty = {"inputs": [tensor("x", "FP32", [0, 2**61 - 1], [])]}  # 4 bytes an element: just within numpy's reach
    (output,) = infer(client, "/v2/models/kinds/infer", empty)["outputs"]
    assert output == {"name": "y", "shape": [0, 2**61 - 1], "datatype": "FP32", "data": []}


def test_infer_is_checked_against_the_cached_metadata(surface_app, client, monkeypatch):
    """No model metadata call per inference (the gRPC backend fills its cache once; the embedded one never asks);
    the model metadata endpoint asks afresh. The SavedModel's own signatures are not for calling."""
    inner = surface_app.extensions["serving"].backend.inner
    asked, ask = [], inner.get_model_metadata
    monkeypatch.setattr(inner, "get_model_metadata", lambda ref: asked.append(ref) or ask(ref))
    request = {"inputs": [tensor("x", "FP32", [1, 1], [1])]}
    for _ in range(3):
        assert infer(client, f"/v2/models/{HALF_PLUS_TWO}/infer", request)["outputs"][0]["data"] == [2.5]
    assert len(asked) <= 1, asked
    before = len(asked)
    get(client, f"/v2/models/{HALF_PLUS_TWO}")
    assert len(asked) == before + 1
    own = {"parameters": {"signature_name": "__saved_model_init_op"}, "inputs": [tensor("text", "BYTES", [1], ["a"])]}
    assert infer(client, "/v2/models/texts/infer", own, status=404)["error"] == (
        "texts version 1 has no signature '__saved_model_init_op' (signatures: serving_default); "
        "name one in parameters.signature_name"
    )


def test_the_protocols_paths_and_methods(client):
    assert client.get("/v2/models/kinds/infer").status_code == 405
    assert "not allowed: use POST" in client.get("/v2/models/kinds/infer").get_json()["error"]
    assert client.post("/v2/models/kinds").status_code == 405
    assert client.get("/v2/no/such/thing").get_json() == {"error": "no such endpoint: GET /v2/no/such/thing"}


@pytest.mark.parametrize("row", tensors.DTYPES, ids=lambda row: row.dtype.str)
def test_every_dtype_of_the_gateways_arrays_has_its_protocol_name(row):
    value = np.zeros(2, dtype=row.dtype) if row.dtype.kind != "O" else np.array([b"a", b"b"], dtype=object)
    assert v2_tensors.output_tensor("y", value)["datatype"] == v2_tensors.datatype_of(row.datatype)
    assert v2_tensors.output_tensor("y", value.astype(row.dtype.newbyteorder(">")))["datatype"] == (
        v2_tensors.datatype_of(row.datatype)
    )
    assert v2_tensors.output_tensor("y", np.array(["a"]))["datatype"] == "BYTES"  # str and bytes arrays too
    with pytest.raises(BadInput, match="complex64 has no Open Inference Protocol datatype"):
        v2_tensors.output_tensor("y", np.zeros(1, dtype=np.complex64))


def test_not_a_number_and_infinity_come_back(client):
    request = {"inputs": [tensor("x", "FP32", [3], [math.inf, -math.inf, 1e39])]}
    raw = client.post("/v2/models/kinds/infer", data=json.dumps(request), content_type=JSON).get_data(as_text=True)
    assert json.loads(raw)["outputs"][0]["data"] == [math.inf, -math.inf, math.inf]


def test_v2_keys_limits_and_sizes(tmp_path, model_api_models):
    app, double = surface_app_of(
        "local",
        serving_dir(tmp_path, model_api_models),
        api_keys=("k" * 24,),
        rate_limit="1/minute",
        max_upload_bytes=500,
    )
    try:
        client = app.test_client()
        key = {"Authorization": "Bearer " + "k" * 24}
        assert client.get("/v2/health/ready").status_code == 200  # probes need no key
        refused = client.get("/v2/models/kinds")
        assert refused.status_code == 401 and "needs a key" in refused.get_json()["error"]
        big = client.post("/v2/models/kinds/infer", data="[" * 600, headers=key)
        assert big.status_code == 413 and big.get_json() == {"error": "the request is larger than 500 bytes"}
        again = client.post("/v2/models/kinds/infer", data="{}", headers=key)
        assert again.status_code == 429 and "too many requests" in again.get_json()["error"]
    finally:
        close_surface_app(app, double)
