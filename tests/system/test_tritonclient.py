"""tritonclient's HTTP client, with its defaults, against a live gateway's /v2 (issue 25).

The most common Open Inference Protocol client, written by nobody here: it sends every input as binary data and
asks for every output so (the binary tensor data extension). Against a real gunicorn on loopback over the demo
servables: server live, ready and metadata, model metadata and readiness, and inference on the gallery search
and the face detector, whose numbers must be the JSON form's, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.support.gateway import demo_serving_dir
from tests.support.live_server import LiveServer, live_gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LiveServer]:
    """The gateway as `make run` serves it, over a private copy of the demo servables and the shipped config."""
    folder = tmp_path_factory.mktemp("tritonclient-gateway")
    config = demo_serving_dir(folder, demo_root)
    # No warmup (it only makes a first request faster) and no rate limit (this client's calls come in a burst).
    env = {"GATEWAY_WARMUP": "0", "GATEWAY_RATE_LIMIT": ""}
    with live_gateway(config, folder, env=env) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[triton.InferenceServerClient]:
    host, port = live.address
    client = triton.InferenceServerClient(url=f"{host}:{port}")  # every setting tritonclient's own
    yield client
    client.close()


def infer_as_json(live: LiveServer, model: str, inputs: dict[str, tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The same inference through the JSON form of /v2, each output as an array of its datatype."""
    request = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": list(value.shape), "data": value.ravel().tolist()}
            for name, (datatype, value) in inputs.items()
        ]
    }
    status, body = live.request(
        "POST", f"/v2/models/{model}/infer", json.dumps(request).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, body[:500]
    outputs = {}
    for output in json.loads(body)["outputs"]:
        assert "parameters" not in output  # UTF-8 strings, no base64
        dtype = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "BYTES": object}[output["datatype"]]
        values = [item.encode() for item in output["data"]] if dtype is object else output["data"]
        outputs[output["name"]] = np.array(values, dtype=dtype).reshape(output["shape"])
    return outputs


def triton_input(name: str, datatype: str, value: np.ndarray) -> triton.InferInput:
    item = triton.InferInput(name, list(value.shape), datatype)
    item.set_data_from_numpy(value)  # binary_data=True, the default
    return item


def test_server_and_model_metadata(client: triton.InferenceServerClient):
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "portrait-gateway" and "binary_tensor_data" in server["extensions"]
    metadata = client.get_model_metadata("latent_search_model")
    assert metadata["name"] == "latent_search_model" and metadata["versions"] == ["1"]
    assert {item["name"]: item["datatype"] for item in metadata["inputs"]} == {
        "k_num": "INT32",
        "target_latent": "FP32",
    }
    assert {item["name"] for item in metadata["outputs"]} >= {"xvals", "indices", "filenames"}
    assert client.get_model_metadata("face_detection", model_version="1")["inputs"] == [
        {"name": "input_images", "datatype": "UINT8", "shape": [1, -1, -1, 3]}
    ]
    assert client.is_model_ready("latent_search_model") and client.is_model_ready("face_detection", "1")
    assert not client.is_model_ready("latent_search_model", "7")
    assert not client.is_model_ready("nobody")


def test_gallery_search_with_the_clients_defaults(client: triton.InferenceServerClient, live: LiveServer):
    metadata = client.get_model_metadata("latent_search_model")
    (shape,) = [item["shape"] for item in metadata["inputs"] if item["name"] == "target_latent"]
    latent = np.random.default_rng(3).normal(size=[1, *shape[1:]]).astype(np.float32)
    k = np.array(4, dtype=np.int32)
    inputs = [triton_input("target_latent", "FP32", latent), triton_input("k_num", "INT32", k)]
    result = client.infer("latent_search_model", inputs, request_id="7")
    answer = result.get_response()
    assert answer["id"] == "7" and answer["model_version"] == "1"
    assert all("binary_data_size" in output["parameters"] for output in answer["outputs"])  # sent as bytes
    expected = infer_as_json(live, "latent_search_model", {"target_latent": ("FP32", latent), "k_num": ("INT32", k)})
    for name, value in expected.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype and got.shape == value.shape == (1, 4), name
        assert got.tolist() == value.tolist(), name
    # One output asked for by name, binary as the client asks by default; a version by number.
    narrowed = client.infer(
        "latent_search_model", inputs, model_version="1", outputs=[triton.InferRequestedOutput("filenames")]
    )
    assert [output["name"] for output in narrowed.get_response()["outputs"]] == ["filenames"]
    assert narrowed.as_numpy("filenames").tolist() == expected["filenames"].tolist()


def test_face_detection_on_a_photo_with_the_clients_defaults(client: triton.InferenceServerClient, live: LiveServer):
    from skimage import data as photos
    from skimage.transform import resize

    pixels = (resize(photos.astronaut(), (256, 256), anti_aliasing=True) * 255).astype(np.uint8)[None]
    result = client.infer("face_detection", [triton_input("input_images", "UINT8", pixels)])
    expected = infer_as_json(live, "face_detection", {"input_images": ("UINT8", pixels)})
    assert {output["name"] for output in result.get_response()["outputs"]} == set(expected)
    for name, value in expected.items():
        assert result.as_numpy(name).tolist() == value.tolist(), name
    assert result.as_numpy("scores").max() > 0.5  # the astronaut's face


def test_errors_reach_the_client_as_the_protocol_words_them(client: triton.InferenceServerClient):
    wrong = triton_input("target_latent", "FP64", np.zeros([1, 4]))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("latent_search_model", [wrong])
    assert raised.value.status() == "400"
    assert "input 'target_latent' of latent_search_model is FP32, not FP64" in raised.value.message()
    with pytest.raises(InferenceServerException) as raised:
        client.infer("nobody", [wrong])
    assert raised.value.status() == "404"
