"""The binary tensor data extension of the Open Inference Protocol on /v2, on both backends: a body of JSON, then
tensors' bytes (``Inference-Header-Content-Length``, ``binary_data_size``), both ways; the same numbers as the JSON
form and as /v1; every malformed body a 400 in the protocol's ``{"error": ...}``, never a 500.

The bodies here are built and read from Triton's extension_binary_data.md with struct and numpy, so that each
malformed case is exactly the one named; tritonclient's own codec (generate_request_body, parse_response_body)
checks every datatype's round trip beside them. tests/system/test_tritonclient.py runs its HTTP client.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests.support import model_api_servables as servables
from tests.support.model_api_servables import HALF_PLUS_TWO, close_surface_app, serving_dir, surface_app_of

# The fixtures this module uses, from the servables' module (tests/model_api_servables.py).
model_api_models = servables.model_api_models
surface_app = servables.surface_app

HEADER = "Inference-Header-Content-Length"
OCTETS = "application/octet-stream"
KINDS = "/v2/models/kinds/infer"
SEARCH = "/v2/models/latent_search_model/infer"
DETECT = "/v2/models/face_detection/infer"

# -- bodies, as the extension lays them out ----------------------------------------------------------------------


def tensor_bytes(value: np.ndarray) -> bytes:
    """A tensor's binary data: row-major little-endian elements; a BYTES element as a 4-byte length, then its bytes."""
    if value.dtype.kind == "O":
        return b"".join(struct.pack("<I", len(item)) + item for item in value.ravel().tolist())
    return value.astype(value.dtype.newbyteorder("<")).tobytes()


def binary_input(name: str, datatype: str, value: np.ndarray) -> tuple[dict, bytes]:
    data = tensor_bytes(value)
    return {
        "name": name,
        "shape": list(value.shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(data)},
    }, data


def body_of(request: dict, *binary: bytes, pad: int = 0) -> tuple[bytes, dict[str, str]]:
    """The JSON (``pad`` spaces longer, to move the binary data to another byte offset), then the binary data."""
    header = json.dumps(request).encode() + b" " * pad
    return header + b"".join(binary), {HEADER: str(len(header)), "Content-Type": OCTETS}


def post(client, path: str, body: bytes | dict, headers: dict[str, str] | None = None) -> TestResponse:
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    return client.post(path, data=body, headers=headers or {})


def answer_of(response: TestResponse) -> tuple[dict, dict[str, np.ndarray]]:
    """The answer's JSON, and each binary output as an array, read from the extension's layout."""
    assert response.status_code == 200, response.get_data()[:500]
    raw = response.get_data()
    if HEADER not in response.headers:
        assert response.mimetype == "application/json"
        answer, binary = json.loads(raw), b""
    else:
        assert response.mimetype == OCTETS
        length = int(response.headers[HEADER])
        answer, binary = json.loads(raw[:length]), raw[length:]
    arrays, offset = {}, 0
    for output in answer["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            assert "data" in output
            continue
        assert "data" not in output
        arrays[output["name"]] = read_tensor(binary[offset : offset + size], output["datatype"], output["shape"])
        offset += size
    assert offset == len(binary), "the binary outputs' sizes add up to the bytes after the JSON"
    return answer, arrays


def read_tensor(data: bytes, datatype: str, shape: list[int]) -> np.ndarray:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(data):
            (length,) = struct.unpack_from("<I", data, offset)
            items.append(data[offset + 4 : offset + 4 + length])
            offset += 4 + length
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(shape)


def error_of(response: TestResponse, status: int = 400) -> str:
    assert response.status_code == status, response.get_data()[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}
    return body["error"]


# -- every datatype, both ways -------------------------------------------------------------------------------------

# The kinds servable's identity signature per datatype, and values that reach each one's ends.
DTYPES = {
    "BOOL": "?", "UINT8": "u1", "UINT16": "u2", "UINT32": "u4", "UINT64": "u8", "INT8": "i1", "INT16": "i2",
    "INT32": "i4", "INT64": "i8", "FP16": "f2", "FP32": "f4", "FP64": "f8", "BYTES": "O",
}  # fmt: skip
SIGNATURES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
    "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "half", "FP32": "float", "FP64": "double",
    "BYTES": "string",
}  # fmt: skip


def sample(datatype: str) -> np.ndarray:
    """A [2, 3] tensor of the datatype with its extremes in it."""
    dtype = np.dtype(DTYPES[datatype])
    if datatype == "BOOL":
        flat = np.array([True, False, True, True, False, False])
    elif datatype == "BYTES":
        flat = np.empty(6, dtype=object)
        flat[:] = [b"face", b"", b"\x00\xff\xfe", "gallery é".encode(), b"x" * 300, b"\x00"]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        flat = np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1], dtype=dtype)
    else:
        info = np.finfo(dtype)
        flat = np.array([info.min, info.max, info.tiny, -0.0, np.pi, -1.5], dtype=dtype)
    return flat.reshape(2, 3)


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_every_datatype_round_trips_as_binary(surface_app, datatype):
    client = surface_app.test_client()
    value = sample(datatype)
    item, data = binary_input("x", datatype, value)
    request = {"parameters": {"signature_name": SIGNATURES[datatype]}, "inputs": [item]}
    binary_request = request | {"outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    answer, arrays = answer_of(post(client, KINDS, *body_of(binary_request, data, pad=1)))  # at an odd offset
    assert answer["outputs"] == [
        {"name": "y", "shape": [2, 3], "datatype": datatype, "parameters": {"binary_data_size": len(data)}}
    ]
    assert arrays["y"].dtype == value.dtype and arrays["y"].tolist() == value.tolist()
    # The same request answered in JSON holds the same numbers.
    json_answer, none = answer_of(post(client, KINDS, *body_of(request, data)))
    assert none == {}
    (output,) = json_answer["outputs"]
    if datatype == "BYTES":
        assert output["parameters"] == {"content_type": "base64"}  # b"\x00\xff\xfe" is not UTF-8
    else:
        assert np.array(output["data"], dtype=value.dtype).reshape(2, 3).tolist() == value.tolist()


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_tritonclients_codec_reads_and_writes_what_the_gateway_does(surface_app, datatype):
    """tritonclient's own body writer and reader (its HTTP client's, without the socket) over every datatype."""
    value = sample(datatype)
    item = triton.InferInput("x", list(value.shape), datatype)
    item.set_data_from_numpy(value)  # binary, tritonclient's default
    body, header_length = triton.InferenceServerClient.generate_request_body(
        [item], outputs=[triton.InferRequestedOutput("y")], parameters={"signature_name": SIGNATURES[datatype]}
    )
    response = post(surface_app.test_client(), KINDS, body, {HEADER: str(header_length)})
    assert response.status_code == 200, response.get_data()[:500]
    result = triton.InferenceServerClient.parse_response_body(
        response.get_data(), header_length=response.headers.get(HEADER)
    )
    assert result.as_numpy("y").tolist() == value.tolist()


def test_bytes_outputs_come_back_as_they_were(surface_app):
    """Binary BYTES are raw bytes both ways: no UTF-8 and no base64 on the way."""
    value = np.empty(3, dtype=object)
    value[:] = [b"\x00\xff", b"", "é".encode()]
    item, data = binary_input("text", "BYTES", value)
    request = {"inputs": [item], "parameters": {"binary_data_output": True}}
    answer, arrays = answer_of(post(surface_app.test_client(), "/v2/models/texts/infer", *body_of(request, data)))
    assert arrays["echo_bytes"].tolist() == value.tolist()
    assert arrays["length"].tolist() == [2, 0, 2]
    assert arrays["upper"].tolist() == [b"\x00\xff", b"", "é".encode()]  # upper() leaves non-ASCII alone
    assert [output["name"] for output in answer["outputs"]] == ["echo_bytes", "length", "upper"]


def test_which_outputs_are_binary(surface_app):
    """``binary_data`` on an output wins over the request's ``binary_data_output``; outputs keep the asked order."""
    client = surface_app.test_client()
    text = {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["face", "gallery"]}
    request = {
        "parameters": {"binary_data_output": True},
        "inputs": [text],
        "outputs": [{"name": "upper"}, {"name": "length", "parameters": {"binary_data": False}}],
    }
    answer, arrays = answer_of(post(client, "/v2/models/texts/infer", request))
    assert answer["outputs"][1] == {"name": "length", "shape": [2], "datatype": "INT32", "data": [4, 7]}
    assert arrays["upper"].tolist() == [b"FACE", b"GALLERY"]
    # Without binary_data_output, only those marked; with none marked, plain JSON as before.
    request = {"inputs": [text], "outputs": [{"name": "length", "parameters": {"binary_data": True}}]}
    answer, arrays = answer_of(post(client, "/v2/models/texts/infer", request))
    assert arrays["length"].tolist() == [4, 7]
    plain = post(client, "/v2/models/texts/infer", {"inputs": [text], "outputs": [{"name": "length"}]})
    assert HEADER not in plain.headers and plain.get_json()["outputs"][0]["data"] == [4, 7]


def test_an_empty_binary_output_is_plain_json(surface_app):
    """As Triton answers: an output of no bytes is marked ``binary_data_size: 0``, and with no bytes to send the
    answer is JSON without the header. Empty binary inputs need no header either."""
    item = {"name": "x", "shape": [0, 3], "datatype": "FP32", "parameters": {"binary_data_size": 0}}
    request = {"inputs": [item], "parameters": {"binary_data_output": True}}
    response = post(surface_app.test_client(), KINDS, json.dumps(request).encode())
    answer, arrays = answer_of(response)
    assert HEADER not in response.headers
    assert answer["outputs"] == [
        {"name": "y", "shape": [0, 3], "datatype": "FP32", "parameters": {"binary_data_size": 0}}
    ]
    assert arrays["y"].shape == (0, 3)


def test_server_metadata_names_the_extension(surface_app):
    assert surface_app.test_client().get("/v2").get_json()["extensions"] == ["binary_tensor_data"]


# -- the demo servables: the same numbers as JSON and as /v1 -----------------------------------------------------


def latent(demo_app) -> np.ndarray:
    """A latent of the gallery's shape, from the model's metadata."""
    metadata = demo_app.test_client().get("/v2/models/latent_search_model").get_json()
    (shape,) = [item["shape"] for item in metadata["inputs"] if item["name"] == "target_latent"]
    return np.random.default_rng(7).normal(size=[1, *shape[1:]]).astype(np.float32)


def test_mixed_binary_and_json_match_the_json_form_and_v1(demo_app):
    client = demo_app.test_client()
    target = latent(demo_app)
    item, data = binary_input("target_latent", "FP32", target)
    k = {"name": "k_num", "shape": [], "datatype": "INT32", "data": [4]}
    outputs = [
        {"name": "xvals", "parameters": {"binary_data": True}},
        {"name": "filenames"},
        {"name": "indices", "parameters": {"binary_data": True}},
    ]
    answer, arrays = answer_of(
        post(client, SEARCH, *body_of({"id": "7", "inputs": [k, item], "outputs": outputs}, data))
    )
    assert answer["id"] == "7" and answer["model_name"] == "latent_search_model"
    by_name = {output["name"]: output for output in answer["outputs"]}
    assert list(by_name) == ["xvals", "filenames", "indices"]
    assert arrays["xvals"].dtype == np.float32 and arrays["xvals"].shape == (1, 4)
    assert arrays["indices"].dtype == np.int32

    as_json = {
        "name": "target_latent",
        "shape": list(target.shape),
        "datatype": "FP32",
        "data": target.ravel().tolist(),
    }
    plain = {o["name"]: o for o in post(client, SEARCH, {"inputs": [as_json, k]}).get_json()["outputs"]}
    assert np.array(plain["xvals"]["data"], dtype=np.float32).reshape(1, 4).tolist() == arrays["xvals"].tolist()
    assert plain["indices"]["data"] == arrays["indices"].ravel().tolist()
    assert plain["filenames"]["data"] == by_name["filenames"]["data"]

    v1 = client.post(
        "/v1/models/latent_search_model:predict", json={"inputs": {"target_latent": target.tolist(), "k_num": 4}}
    ).get_json()["outputs"]
    assert np.array(v1["xvals"], dtype=np.float32).tolist() == arrays["xvals"].tolist()
    assert v1["indices"] == arrays["indices"].tolist()
    assert v1["filenames"] == [by_name["filenames"]["data"]]


def test_an_image_servable_in_binary_matches_json(demo_app):
    """The detector on a photo's pixels sent as bytes, answered in bytes: the JSON form's numbers, bit for bit."""
    from skimage import data as photos
    from skimage.transform import resize

    pixels = (resize(photos.astronaut(), (192, 192), anti_aliasing=True) * 255).astype(np.uint8)[None]
    client = demo_app.test_client()
    item, data = binary_input("input_images", "UINT8", pixels)
    answer, arrays = answer_of(
        post(client, DETECT, *body_of({"inputs": [item], "parameters": {"binary_data_output": True}}, data))
    )
    assert set(arrays) == {output["name"] for output in answer["outputs"]} >= {"boxes", "scores", "num_detections"}
    as_json = {
        "name": "input_images",
        "shape": list(pixels.shape),
        "datatype": "UINT8",
        "data": pixels.ravel().tolist(),
    }
    plain = post(client, DETECT, {"inputs": [as_json]}).get_json()["outputs"]
    for output in plain:
        array = arrays[output["name"]]
        assert output["shape"] == list(array.shape)
        assert np.array(output["data"], dtype=array.dtype).reshape(array.shape).tolist() == array.tolist()
    assert arrays["scores"].max() > 0.5  # the astronaut's face is found


# -- malformed bodies: 400, the protocol's error, never a 500 -----------------------------------------------------

FOUR_FLOATS = np.arange(4, dtype="<f4").tobytes()
NOT_UTF8 = b'{"inputs": "\xff"}'


def _x(size: Any = 16, **more: Any) -> dict:
    return {"name": "x", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": size}} | more


def _body(inputs: list[dict], *binary: bytes, **request: Any) -> tuple[bytes, dict[str, str]]:
    return body_of({"inputs": inputs, **request}, *binary)


def _with_header(value: str, inputs: list[dict] | None = None, *binary: bytes) -> tuple[bytes, dict[str, str]]:
    body, headers = _body(inputs or [_x()], *(binary or (FOUR_FLOATS,)))
    return body, headers | {HEADER: value}


def _strings(*elements: bytes, shape: list[int] | None = None, cut: int = 0) -> tuple[bytes, dict[str, str]]:
    data = b"".join(elements)
    data = data[: len(data) - cut]
    item = {"name": "x", "shape": shape or [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(data)}}
    return _body([item], data, parameters={"signature_name": "string"})


def _length(size: int) -> bytes:
    return struct.pack("<I", size)


SIZE = "parameters.binary_data_size"
MALFORMED = {
    "header not a number": (_with_header("sixty"), f"{HEADER} must be the JSON's length in bytes"),
    "header negative": (_with_header("-5"), "a whole number, not '-5'"),
    "header fractional": (_with_header("12.5"), "a whole number, not '12.5'"),
    "header empty": (_with_header(""), "a whole number, not ''"),
    "header past the body": (_with_header("100000"), f"{HEADER} is 100000, but the body has only"),
    "header past int64": (_with_header("9" * 30), "but the body has only"),
    "header zero (a raw binary request)": (_with_header("0"), "0 (a body of one input's bytes and no JSON) is not"),
    "header inside the JSON": (_with_header("10"), "Invalid JSON"),
    "header past the JSON": (_with_header(str(len(json.dumps({"inputs": [_x()]})) + 2)), "Invalid JSON"),
    "binary data without the header": (
        (_body([_x()], FOUR_FLOATS)[0], {}),
        f"trailing characters at line 1 column {len(json.dumps({'inputs': [_x()]})) + 1} (a body with binary tensor "
        f"data needs the {HEADER} header)",
    ),
    "binary size without the header": (
        (json.dumps({"inputs": [_x()]}).encode(), {}),
        f"input 'x' has 16 bytes of binary data, but the request has no {HEADER} header",
    ),
    "sizes past the body": (
        _body([_x(), _x(name="x2")], FOUR_FLOATS, FOUR_FLOATS[:8]),
        f"input 'x2': {SIZE} is 16, but only 8 bytes",
    ),
    "bytes after the inputs": (
        _body([_x()], FOUR_FLOATS, b"\x00"),
        "the body has 1 bytes after the inputs' binary data",
    ),
    "binary data but no binary input": (
        _body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], FOUR_FLOATS),
        "the body has 16 bytes after the inputs' binary data: the inputs' binary_data_size add up to 0 bytes",
    ),
    "size not shape x dtype": (
        _body([_x(12)], FOUR_FLOATS[:12]),
        f"input 'x': {SIZE} is 12, but shape [4] of FP32 is 16",
    ),
    "size a string": (_body([_x("16")], FOUR_FLOATS), f"{SIZE} must be a whole number of bytes, not '16'"),
    "size a float": (_body([_x(16.0)], FOUR_FLOATS), "not 16.0"),
    "size a boolean": (_body([_x(True)], FOUR_FLOATS), "not True"),
    "size negative": (_body([_x(-16)], FOUR_FLOATS), "not -16"),
    "size and data": (_body([_x(data=[0, 1, 2, 3])], FOUR_FLOATS), f"input 'x' has both data and {SIZE}"),
    "neither size nor data": (
        _body([{"name": "x", "shape": [4], "datatype": "FP32"}], FOUR_FLOATS),
        f"input 'x' has neither data nor {SIZE}",
    ),
    "BOOL byte that is neither 0 nor 1": (
        _body(
            [{"name": "x", "shape": [2], "datatype": "BOOL", "parameters": {"binary_data_size": 2}}],
            b"\x01\x02",
            parameters={"signature_name": "bool"},
        ),
        "BOOL binary data must be bytes 0 (false) and 1 (true)",
    ),
    "BYTES element past its input": (
        _strings(_length(3), b"abc", _length(9), b"de"),
        "BYTES element 1 is 9 bytes long, but only 2 bytes",
    ),
    "BYTES length cut off": (_strings(_length(3), b"abc", _length(2), cut=1), "BYTES element 1 is cut off in its"),
    "BYTES too few elements": (_strings(_length(3), b"abc"), "binary data holds 1 BYTES elements, shape [2] needs 2"),
    "BYTES too many elements": (
        _strings(_length(1), b"a", _length(1), b"b", _length(0)),
        "4 bytes follow the 2 BYTES elements",
    ),
    "BYTES for an empty shape": (_strings(_length(0), shape=[0]), "4 bytes follow the 0 BYTES elements of shape [0]"),
    "shape too large for binary data": (
        _body(
            [{"name": "x", "shape": [2**62, 2**62], "datatype": "FP32", "parameters": {"binary_data_size": 16}}],
            FOUR_FLOATS,
        ),
        "is 16, but shape [4611686018427387904, 4611686018427387904] of FP32 is",
    ),
    "binary_data not a boolean": (
        _body([_x()], FOUR_FLOATS, outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        "output 'y': parameters.binary_data must be true or false, not 'yes'",
    ),
    "binary_data_output not a boolean": (
        _body([_x()], FOUR_FLOATS, parameters={"binary_data_output": 1}),
        "the request: parameters.binary_data_output must be true or false, not 1",
    ),
    "JSON not UTF-8": ((NOT_UTF8 + FOUR_FLOATS, {HEADER: str(len(NOT_UTF8))}), "the body: Invalid JSON"),
    "datatype not the signature's": (
        _body([{"name": "x", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}}], FOUR_FLOATS),
        "input 'x' of kinds is FP32, not FP64",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_binary_bodies_are_bad_requests(surface_app, case):
    (body, headers), words = MALFORMED[case]
    message = error_of(post(surface_app.test_client(), KINDS, body, headers))
    assert words in message, message


def test_the_body_size_limit_holds_for_binary_bodies(tmp_path, model_api_models):
    app, double = surface_app_of("local", serving_dir(tmp_path, model_api_models), max_upload_bytes=1000)
    try:
        client = app.test_client()
        small = np.zeros(64, dtype=np.float32)
        item, data = binary_input("x", "FP32", small)
        _, arrays = answer_of(post(client, KINDS, *_body([item], data, parameters={"binary_data_output": True})))
        assert arrays["y"].tolist() == small.tolist()
        item, data = binary_input("x", "FP32", np.zeros(512, dtype=np.float32))
        assert error_of(post(client, KINDS, *_body([item], data)), 413) == "the request is larger than 1,000 bytes"
    finally:
        close_surface_app(app, double)


def test_half_plus_two_by_version_label_in_binary(surface_app):
    """The pinned paths take binary bodies too."""
    item, data = binary_input("x", "FP32", np.array([[1.0], [3.0]], dtype=np.float32))
    path = f"/v2/models/{HALF_PLUS_TWO}/versions/{servables.HALF_PLUS_TWO_LABEL}/infer"
    _, arrays = answer_of(
        post(surface_app.test_client(), path, *_body([item], data, parameters={"binary_data_output": True}))
    )
    assert arrays["y"].tolist() == [[2.5], [3.5]]


@st.composite
def binary_bodies(draw) -> tuple[bytes, dict[str, str]]:
    """Bodies near a valid one: a datatype's input with a size and bytes that may or may not fit, maybe a JSON
    input beside it, and a header that may be right, off, or not a number."""
    datatype = draw(st.sampled_from(list(DTYPES)))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    data = draw(st.binary(max_size=64))
    size = draw(st.one_of(st.just(len(data)), st.integers(-2, 80)))
    inputs = [{"name": "x", "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}]
    if draw(st.booleans()):
        inputs.append({"name": "x", "shape": [1], "datatype": datatype, "data": [1]})
    request = {"inputs": inputs, "parameters": {"signature_name": SIGNATURES[datatype], "binary_data_output": True}}
    body, headers = body_of(request, data)
    length = int(headers[HEADER])
    header = draw(st.one_of(st.just(length), st.integers(-3, len(body) + 3).map(str), st.text(max_size=4)))
    return body, headers | {HEADER: str(header)}


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=binary_bodies())
def test_bodies_near_a_valid_one_are_answered_or_refused_never_failed(surface_app, case):
    body, headers = case
    response = post(surface_app.test_client(), KINDS, body, headers)
    if response.status_code == 200:
        answer_of(response)
    else:
        error_of(response, 400)
