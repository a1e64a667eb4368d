"""Every exported demo servable loads and replays its warmup under the TensorFlow that the pinned TF Serving runs.

docker-compose.yaml pins tensorflow/serving X.Y.Z, built on TensorFlow X.Y.Z; the project exports with its
own TensorFlow (requirements.txt), which may be newer. A second virtualenv with tensorflow-cpu X.Y.Z (the
version read from the compose file) is made on first use and kept under
``~/.cache/portrait-gateway/tf-compat/``, keyed by the version. In it, and in the project's own
interpreter, each servable is loaded the way TF Serving loads it (TF1 ``loader.load`` in a Session, the
"serve" tag) and every Predict record of its warmup file is run by the SignatureDef's tensor names; the
two sets of outputs must agree (same dtypes and shapes, floats within 1e-5).

Without a network to build that virtualenv the test skips with the reason, unless
``GATEWAY_REQUIRE_TF_COMPAT=1`` (as ``.ci/run`` sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import prediction_log_pb2

from app.config import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # a first run downloads TensorFlow

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "portrait-gateway" / "tf-compat"
WARMUP = Path("assets.extra") / "tf_serving_warmup_requests"
INSTALL_TIMEOUT = 1500  # seconds for pip to fetch and install TensorFlow the first time
RTOL = ATOL = 1e-5

# Run by both interpreters: load each servable as TF Serving does and run its Predict warmup records.
REPLAY = r"""
import base64, json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

job = json.load(open(sys.argv[1]))
answer = {"tensorflow": tf.__version__, "servables": {}}
for name, servable in job.items():
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], servable["path"])
        outputs = []
        for record in servable["records"]:
            signature = meta_graph.signature_def[record["signature"] or "serving_default"]
            feed = {
                signature.inputs[alias].name: tf.make_ndarray(tensor_pb2.TensorProto.FromString(base64.b64decode(data)))
                for alias, data in record["inputs"].items()
            }
            aliases = record["output_filter"] or sorted(signature.outputs)
            values = session.run([signature.outputs[alias].name for alias in aliases], feed_dict=feed)
            outputs.append({
                alias: base64.b64encode(tf.make_tensor_proto(np.asarray(value)).SerializeToString()).decode()
                for alias, value in zip(aliases, values)
            })
        answer["servables"][name] = outputs
json.dump(answer, open(sys.argv[2], "w"))
"""


def serving_tensorflow_version() -> str:
    """The TensorFlow of the TF Serving image docker-compose.yaml pins (TF Serving X.Y.Z is built on TF X.Y.Z)."""
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text(encoding="utf-8"))
    image = compose["services"]["serving"]["image"]
    match = re.fullmatch(r"tensorflow/serving:(\d+\.\d+\.\d+)(-gpu)?", image)
    assert match, f"the serving image {image!r} is not a pinned tensorflow/serving release"
    return match.group(1)


def _unavailable(reason: str) -> None:
    if os.environ.get("GATEWAY_REQUIRE_TF_COMPAT") == "1":
        pytest.fail(f"{reason}, and GATEWAY_REQUIRE_TF_COMPAT=1 asks for this test to run")
    pytest.skip(reason)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time (two test runs may start together); the others wait and then reuse its work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tensorflow_python(version: str) -> Path:
    """The interpreter of the cached virtualenv with tensorflow-cpu ``version``; made on first use (minutes)."""
    target = CACHE / f"tensorflow-cpu-{version}"
    python = target / "bin" / "python"
    if (target / "ready").is_file():
        return python
    with _locked(CACHE / ".lock"):
        if (target / "ready").is_file():
            return python
        staging = CACHE / f".building-{version}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)  # a virtualenv left unfinished
        try:
            subprocess.run([sys.executable, "-m", "venv", str(staging)], check=True, capture_output=True, timeout=300)
            install = subprocess.run(
                [str(staging / "bin" / "python"), "-m", "pip", "install", "--quiet", f"tensorflow-cpu=={version}"],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            _unavailable(f"no virtualenv with tensorflow-cpu=={version} could be made ({exc})")
        if install.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            _unavailable(
                f"pip could not install tensorflow-cpu=={version} (no network?): {install.stderr.strip()[-400:]}"
            )
        (staging / "ready").write_text(f"tensorflow-cpu=={version}\n", encoding="utf-8")
        staging.rename(target)  # whole, or not there: an interrupted build is never taken for a ready one
    return python


def warmup_records(version_dir: Path) -> list[dict]:
    """The Predict requests of a version's warmup file, their tensors as serialized TensorProtos."""
    records = []
    for data in tf.compat.v1.io.tf_record_iterator(str(version_dir / WARMUP)):
        entry = prediction_log_pb2.PredictionLog.FromString(data)
        kind = entry.WhichOneof("log_type")
        assert kind == "predict_log", f"{version_dir}: a {kind} warmup record (this check replays Predict ones)"
        request = entry.predict_log.request
        records.append(
            {
                "signature": request.model_spec.signature_name,
                "inputs": {
                    alias: base64.b64encode(proto.SerializeToString()).decode()
                    for alias, proto in request.inputs.items()
                },
                "output_filter": list(request.output_filter),
            }
        )
    return records


def replay(python: Path | str, job: dict, work: Path) -> dict:
    (work / "replay.py").write_text(REPLAY, encoding="utf-8")
    (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
    answer = work / f"answer-{Path(python).parent.parent.name}.json"
    result = subprocess.run(
        [str(python), str(work / "replay.py"), str(work / "job.json"), str(answer)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, f"{python} failed to load or run the exports:\n{result.stderr[-4000:]}"
    return json.loads(answer.read_text(encoding="utf-8"))


def _arrays(outputs: dict[str, str]) -> dict[str, np.ndarray]:
    return {
        alias: tf.make_ndarray(tensor_pb2.TensorProto.FromString(base64.b64decode(data)))
        for alias, data in outputs.items()
    }


def ivf_search_export(root: Path) -> Path:
    """An IVF latent_search_model (app/modelzoo/ivf.py) over a small clustered gallery, split into several
    variables by a lowered size limit so the multi-part gathers run too."""
    from app.modelzoo import ivf

    rng = np.random.default_rng(4)
    centres = rng.standard_normal((60, 128))
    faces = centres[rng.integers(0, 60, 3000)] + 0.2 * rng.standard_normal((3000, 128))
    faces = (faces / np.linalg.norm(faces, axis=1, keepdims=True)).astype(np.float32)
    names = [f"faces/{i:05d}.jpg" for i in range(len(faces))]
    training = ivf.train_ivf(faces, lists=64, seed=0)
    return ivf.export_ivf_search_model(root / "1", faces, names, training, max_variable_bytes=64 * 1024)


@pytest.mark.long(minutes=1)
def test_every_export_loads_and_replays_its_warmup_under_the_serving_tensorflow(demo_root: Path, tmp_path: Path):
    version = serving_tensorflow_version()
    started = time.monotonic()
    python = tensorflow_python(version)
    built = time.monotonic() - started
    ivf_root = tmp_path / "ivf_exports" / "latent_search_model_ivf"
    ivf_search_export(ivf_root)
    job = {}
    for base in [*sorted(path for path in demo_root.iterdir() if path.is_dir()), ivf_root]:
        for version_dir in sorted(path for path in base.iterdir() if path.name.isdigit()):
            name = f"{base.name}/{version_dir.name}"
            assert (version_dir / WARMUP).is_file(), f"{name} has no warmup records (TF Serving would start it cold)"
            job[name] = {"path": str(version_dir), "records": warmup_records(version_dir)}
            assert job[name]["records"], f"{name}: its warmup file is empty"
    assert job, f"export_models wrote nothing under {demo_root}"

    theirs = replay(python, job, tmp_path)
    ours = replay(sys.executable, job, tmp_path)
    print(
        f"tensorflow {theirs['tensorflow']} (virtualenv ready in {built:.1f} s) against {ours['tensorflow']}: "
        f"{len(job)} servables, {sum(len(s['records']) for s in job.values())} warmup records, "
        f"{time.monotonic() - started:.1f} s in all"
    )
    assert theirs["tensorflow"] == version
    assert theirs["servables"].keys() == job.keys()
    for name in job:
        for number, (theirs_out, ours_out) in enumerate(
            zip(theirs["servables"][name], ours["servables"][name], strict=True)
        ):
            old, new = _arrays(theirs_out), _arrays(ours_out)
            assert old.keys() == new.keys(), name
            for alias, expected in new.items():
                where = f"{name}, warmup record {number}, output {alias!r}"
                assert (old[alias].dtype, old[alias].shape) == (expected.dtype, expected.shape), where
                if np.issubdtype(expected.dtype, np.floating):
                    np.testing.assert_allclose(old[alias], expected, rtol=RTOL, atol=ATOL, err_msg=where)
                else:
                    np.testing.assert_array_equal(old[alias], expected, err_msg=where)
