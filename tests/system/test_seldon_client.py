"""Seldon's own Python client (seldon-core's SeldonClient, in a virtualenv of its own) against a live gateway: its
REST requests answered with the same numbers as /v1, in the kind it asked for, its errors in Seldon's shape."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from skimage import data

from tests.support.gateway import demo_serving_dir
from tests.support.live_server import LiveServer, live_gateway
from tests.support.thin_gateway import gateway_venv

pytestmark = pytest.mark.slow
REQUIREMENTS = Path(__file__).resolve().parents[1] / "support" / "seldon-client-requirements.txt"
ENCODER = "twingan_latent_encoder"
CLIENT = """
import json, sys
import numpy as np
from seldon_core.seldon_client import SeldonClient

port, kind, namespace, path = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]
client = SeldonClient(deployment_name=sys.argv[5], namespace=namespace, gateway="istio",
                      gateway_endpoint=f"127.0.0.1:{port}", transport="rest")
answer = client.predict(data=np.load(path), payload_type=kind, names=["pixels"], meta={"who": "test"})
print(json.dumps({"success": answer.success, "msg": answer.msg, "response": answer.response}))
"""


@pytest.fixture(scope="module")
def seldon_python() -> Path:
    return gateway_venv(requirements=REQUIREMENTS)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("seldon-gateway")
    config = demo_serving_dir(folder, demo_root)
    with live_gateway(config, folder, env={"GATEWAY_WARMUP": "0", "GATEWAY_RATE_LIMIT": ""}) as server:
        yield server


@pytest.fixture(scope="module")
def face(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The astronaut's face, 150 x 150 uint8, as a batch of one (the demo encoder's input)."""
    crop = np.asarray(Image.fromarray(data.astronaut()[60:220, 150:310]).resize((150, 150)))[np.newaxis]
    path = tmp_path_factory.mktemp("face") / "face.npy"
    np.save(path, crop)
    return path


def _client(python: Path, live: LiveServer, kind: str, face: Path, namespace: str = "portrait", name=ENCODER) -> dict:
    done = subprocess.run(
        [str(python), "-c", CLIENT, str(live.address[1]), kind, namespace, str(face), name],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["ndarray", "tensor"])
@pytest.mark.parametrize("namespace", ["portrait", ""])
def test_seldon_client_gets_the_numbers_v1_gives(seldon_python, live, face, kind, namespace):
    answer = _client(seldon_python, live, kind, face, namespace)
    assert answer["success"], answer
    data = answer["response"]["data"]
    assert data["names"] == ["pixels"]
    assert answer["response"]["meta"]["tags"] == {"who": "test"} and answer["response"]["meta"]["puid"]
    latent = np.asarray(data["ndarray"] if kind == "ndarray" else data["tensor"]["values"], np.float32).reshape(1, 128)
    host, port = live.address
    v1 = requests.post(
        f"http://{host}:{port}/v1/models/{ENCODER}:predict", json={"instances": np.load(face).tolist()}, timeout=60
    ).json()
    np.testing.assert_array_equal(latent, np.asarray(v1["predictions"], np.float32))


def test_seldon_client_hears_an_error_in_seldons_shape(seldon_python, live, face):
    answer = _client(seldon_python, live, "ndarray", face, name="no_such_model")
    assert not answer["success"] and answer["msg"].startswith("404")
    assert (
        answer["response"]["status"]["status"] == "FAILURE" and "no_such_model" in answer["response"]["status"]["info"]
    )
