"""The thin gateway: with GATEWAY_BACKEND=grpc the gateway needs, imports and maps no TensorFlow.

The main test builds (once, cached) a virtualenv from requirements-gateway.txt alone, starts the
gateway from it under gunicorn against the TF Serving protocol double (in this process) over the demo
servables, sends it the API's requests and pages, and compares every answer with the in-process app's
(same double, same settings). Then it reads the worker's import state, written by a gunicorn hook
(tests/support/gunicorn_import_probe.py), and the worker's memory map, /proc/<worker>/maps: no ``tensorflow``
module, no TensorFlow library.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from tests.support import harness
from tests.support import thin_gateway as footprint
from tests.support.double import TFServingDouble
from tests.support.gateway import demo_serving_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE_CONFIG = REPO / "tests" / "support" / "gunicorn_import_probe.py"
_TENSORFLOW = re.compile(r"^(tensorflow|tensorflow_serving|tf_keras|keras)(\.|$)")


def _jpeg(pixels) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class Call:
    """One request, sent alike to the thin gateway (over HTTP) and to the in-process app (Flask's test client)."""

    name: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    status: int
    mimetype: str
    body: bytes


def _upload(path: str, photo: bytes, accept: str | None = None, **fields: str) -> tuple[str, bytes, dict[str, str]]:
    body, content_type = harness.multipart(fields, {"image_file": ("portrait.jpg", photo, "image/jpeg")})
    headers = {"Content-Type": content_type} | ({"Accept": accept} if accept else {})
    return path, body, headers


def api_calls() -> list[Call]:
    """A representative set of the API suite's requests: every endpoint, good answers and errors, JSON and pages."""
    astronaut, coffee = _jpeg(data.astronaut()), _jpeg(data.coffee())
    raw_jpeg = {"Content-Type": "image/jpeg"}
    json_body = {"Content-Type": "application/json"}
    search = {"inputs": {"target_latent": [[0.05] * 128], "k_num": 3}}
    infer = {
        "inputs": [
            {"name": "target_latent", "shape": [1, 128], "datatype": "FP32", "data": [0.05] * 128},
            {"name": "k_num", "shape": [], "datatype": "INT32", "data": [3]},
        ]
    }
    return [
        Call("healthz", "GET", "/healthz"),
        Call("readyz", "GET", "/readyz"),
        Call("search", "POST", *_upload("/api/v1/search", astronaut)),
        Call("search with k and images", "POST", "/api/v1/search?k=4&images=1", astronaut, raw_jpeg),
        Call("search without a face", "POST", *_upload("/api/v1/search", coffee)),
        Call("translate", "POST", *_upload("/api/v1/translate", astronaut)),
        Call("translate as JSON", "POST", *_upload("/api/v1/translate", astronaut, accept="application/json")),
        Call("detect", "POST", "/api/v1/detect", astronaut, raw_jpeg),
        Call(
            "detect a file that is no image", "POST", "/api/v1/detect", b"GIF89a, or not", {"Content-Type": "image/gif"}
        ),
        Call("models", "GET", "/api/v1/models"),
        Call("thumbnail", "GET", "/api/v1/gallery/samples/sample1.jpg%231.jpg?version=1"),
        Call("thumbnail of latest", "GET", "/api/v1/gallery/samples/sample1.jpg%231.jpg"),
        Call("thumbnail nobody has", "GET", "/api/v1/gallery/no-such-face.png.jpg"),
        Call("openapi", "GET", "/api/v1/openapi.json"),
        Call("upload page", "GET", "/", headers={"Accept": "text/html"}),
        Call("result page", "POST", *_upload("/detect_face/image", astronaut, accept="text/html", k="3")),
        Call("result page without a face", "POST", *_upload("/detect_face/image", coffee, accept="text/html")),
        # The model surfaces: TF Serving's REST API and the Open Inference Protocol, over gRPC to the double.
        Call("TF Serving REST status", "GET", "/v1/models/face_detection"),
        Call("TF Serving REST metadata", "GET", "/v1/models/latent_search_model/metadata"),
        Call("TF Serving REST predict", "POST", "/v1/models/latent_search_model:predict", json.dumps(search).encode()),
        Call("TF Serving REST unknown model", "POST", "/v1/models/nobody:predict", b'{"instances": [1]}'),
        Call("v2 model metadata", "GET", "/v2/models/face_detection"),
        Call("v2 infer", "POST", "/v2/models/latent_search_model/infer", json.dumps(infer).encode(), json_body),
    ]


_DATA_URI = re.compile(rb"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+")
_NUMBER = re.compile(rb"\d+(?:\.\d+)?")


def comparable(answer: Answer) -> object:
    """What must be the same in both answers: JSON without stage timings; a page's images byte for byte and its
    text with numbers masked (its timings table differs from run to run); anything else byte for byte."""
    if answer.mimetype == "application/json":
        return _without_timings(json.loads(answer.body))
    if answer.mimetype == "text/html":
        return _DATA_URI.findall(answer.body), _NUMBER.sub(b"#", _DATA_URI.sub(b"", answer.body))
    return answer.body


def _without_timings(value: object) -> object:
    if isinstance(value, dict):
        return {key: _without_timings(item) for key, item in value.items() if key != "timings_ms"}
    if isinstance(value, list):
        return [_without_timings(item) for item in value]
    return value


@dataclass
class ThinRun:
    """What the thin gateway answered, what the in-process app answered, and the worker's state afterwards."""

    python: Path
    answers: dict[str, tuple[Answer, Answer]]
    workers: list[int]
    probes: dict[int, dict]
    libraries: dict[int, list[str]]
    maps: dict[int, str]
    log_tail: str


@pytest.fixture(scope="module")
def thin_python() -> Path:
    return footprint.gateway_venv()


@pytest.fixture(scope="module")
def thin_run(thin_python: Path, demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThinRun]:
    from app import create_app

    work = tmp_path_factory.mktemp("thin-gateway")
    config = demo_serving_dir(work, demo_root)
    probe_dir = work / "probe"
    probe_dir.mkdir()
    with TFServingDouble(config, poll_interval=0) as double:
        env = {
            "GATEWAY_BACKEND": "grpc",
            "GATEWAY_SERVING_TARGET": double.address,
            "GATEWAY_MODEL_CONFIG": str(config),
            "GATEWAY_POLL_INTERVAL": "0",
            "GATEWAY_WORKERS": "1",
            "PORTRAIT_TEST_IMPORT_PROBE": str(probe_dir),
        }
        settings = {"backend": "grpc", "serving_target": double.address, "model_config": config, "poll_interval": 0,
                    "rate_limit": ""}  # fmt: skip
        in_process = create_app(settings)
        try:
            with footprint.gateway("thin", thin_python, "app:create_app()", env, work, config=PROBE_CONFIG) as started:
                answers = _exchange(started.server.port, in_process.test_client(), api_calls())
                workers = footprint.worker_pids(started.server.pid)
                yield ThinRun(
                    python=thin_python,
                    answers=answers,
                    workers=workers,
                    probes={pid: json.loads((probe_dir / f"worker-{pid}.json").read_text()) for pid in workers},
                    libraries={pid: footprint.tensorflow_libraries(pid) for pid in workers},
                    maps={pid: (Path("/proc") / str(pid) / "maps").read_text() for pid in workers},
                    log_tail=started.server.log_tail(),
                )
        finally:
            in_process.extensions["serving"].close()


def _exchange(port: int, client, calls: list[Call]) -> dict[str, tuple[Answer, Answer]]:
    live = harness.Client(port, timeout=60)
    answers = {}
    try:
        for call in calls:
            reply = live.send(harness.Request(call.method, call.path, call.body, call.headers))
            content_type = {key.lower(): value for key, value in reply.headers.items()}.get("content-type", "")
            thin = Answer(reply.status, content_type.split(";")[0].strip(), reply.body)
            with client.open(call.path, method=call.method, data=call.body or None, headers=call.headers) as response:
                answers[call.name] = (thin, Answer(response.status_code, response.mimetype, response.get_data()))
    finally:
        live.close()
    return answers


# -- the thin profile --------------------------------------------------------------------------------


def test_the_gateway_profile_installs_no_tensorflow(thin_python: Path) -> None:
    code = (
        "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('tensorflow', 'tensorflow_serving')))"
    )
    assert subprocess.run([str(thin_python), "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("call", [call.name for call in api_calls()])
def test_the_thin_gateway_answers_like_the_in_process_app(thin_run: ThinRun, call: str) -> None:
    thin, in_process = thin_run.answers[call]
    assert thin.status == in_process.status, (thin.body[:300], thin_run.log_tail)
    assert thin.mimetype == in_process.mimetype
    assert comparable(thin) == comparable(in_process)


def test_the_suite_covers_good_answers_errors_and_every_kind_of_body(thin_run: ThinRun) -> None:
    answers = {name: thin for name, (thin, _) in thin_run.answers.items()}
    assert answers["search"].status == answers["result page"].status == answers["thumbnail"].status == 200
    assert json.loads(answers["search"].body)["matches"], "the gallery search found nobody"
    assert answers["translate"].mimetype == "image/png" and answers["thumbnail"].mimetype == "image/jpeg"
    assert answers["search without a face"].status == 422
    assert answers["thumbnail nobody has"].status == 404
    assert answers["result page without a face"].mimetype == "text/html"
    assert answers["TF Serving REST predict"].status == answers["v2 infer"].status == 200
    assert json.loads(answers["TF Serving REST unknown model"].body) == {
        "error": "Servable not found for request: Latest(nobody)"
    }


def test_the_worker_imported_no_tensorflow(thin_run: ThinRun) -> None:
    assert len(thin_run.workers) == 1
    (probe,) = thin_run.probes.values()
    # The report is the thin gateway's: its interpreter, and the modules that served the gRPC path.
    assert Path(probe["prefix"]) == thin_run.python.parent.parent
    modules = set(probe["modules"])
    assert {"app.serving.grpc_backend", "app.serving.protos.tensorflow_serving.apis.predict_pb2", "cv2"} <= modules
    assert "app.serving.local_backend" not in modules
    assert sorted(m for m in modules if _TENSORFLOW.match(m)) == []


def test_the_worker_maps_no_tensorflow_library(thin_run: ThinRun) -> None:
    for pid in thin_run.workers:
        maps = thin_run.maps[pid]
        assert str(thin_run.python.parent.parent) in maps, "the map is not the thin gateway's"
        assert "cv2" in maps and "_message" in maps  # its native libraries are listed: OpenCV's, protobuf's
        assert thin_run.libraries[pid] == []


def test_a_tensorflow_library_is_found_where_one_is_mapped() -> None:
    # This process runs the protocol double, so TensorFlow is loaded here: the same check must see it.
    import tensorflow  # noqa: F401

    libraries = footprint.tensorflow_libraries(os.getpid())
    assert any("libtensorflow" in Path(path).name for path in libraries), libraries


# -- the gRPC path in the full profile ------------------------------------------------------------------


def test_the_grpc_gateway_imports_no_tensorflow_even_where_it_is_installed(tmp_path: Path) -> None:
    """In the full profile too: building the app for the gRPC backend, and every module a view imports, leave
    TensorFlow unloaded (the embedded backend is the one that needs it)."""
    code = (
        "import sys\n"
        "from app import create_app\n"
        "app = create_app({'backend': 'grpc', 'serving_target': '127.0.0.1:9', 'rate_limit': ''})\n"
        "import app.commands.models, app.commands.check\n"
        "import app.thumbnails, app.serving.model_config, app.views.api, app.views.pages, app.views.ops\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_serving', 'keras'))\n"
        "sys.exit(f'TensorFlow loaded: {loaded[:5]}' if loaded else 0)\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_make_run_keeps_the_embedded_backend() -> None:
    from app.config import Settings

    assert Settings.load({}, environ={}).backend == "local"
    run = re.search(r"^run:.*?(?=^\S|\Z)", (REPO / "Makefile").read_text(encoding="utf-8"), re.M | re.S)
    assert run is not None and "GATEWAY_BACKEND" not in run[0]
