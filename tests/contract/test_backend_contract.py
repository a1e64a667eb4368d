"""The backend contract: every case runs against the local backend and the gRPC backend talking to the double.

The shared servers start with no version labels (TF Serving refuses labels on versions that are
not AVAILABLE yet, and at start none is); ``labelled`` gives half_plus its labels once both
versions serve, as a second edit of the config file would.
"""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest

from app.errors import BadInput, UnknownLabel, UnknownModel, UnknownSignature, UnknownVersion
from app.serving.base import Backend, ModelRef
from app.serving.runtime import ModelRuntime
from tests.support import servables
from tests.support.waiting import wait_for

X = np.array([0.0, 1.0, -4.0, 10.5], dtype=np.float32)


def runtime_of(backend: Backend) -> ModelRuntime:
    """The model server behind a backend: the in-process runtime, or the one the double serves."""
    double = getattr(backend, "double", None)
    return double.runtime if double is not None else backend.runtime  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def labelled(shared_backend: Backend) -> Backend:
    """The shared backend with half_plus labelled stable=1, canary=2 (a config reload after start)."""
    if not runtime_of(shared_backend).labels("half_plus"):
        servables.give_labels(runtime_of(shared_backend))
    return shared_backend


# -- predict ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "offset"),
    [
        (ModelRef("half_plus"), 3.0),  # "all" policy: latest is version 2
        (ModelRef("half_plus", version=1), 2.0),
        (ModelRef("half_plus", version=2), 3.0),
        (ModelRef("half_plus", label="stable"), 2.0),
        (ModelRef("half_plus", label="canary"), 3.0),
        (ModelRef("half_plus_latest"), 3.0),
        (ModelRef("half_plus_specific"), 2.0),
    ],
    ids=str,
)
def test_predict_numeric_by_version_and_label(labelled, ref, offset):
    out = labelled.predict(ref, {"x": X})
    assert set(out) == {"y"}
    assert out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], 0.5 * X + offset)


def test_predict_other_signature(shared_backend):
    out = shared_backend.predict(ModelRef("half_plus", signature="times_two"), {"x": X})
    np.testing.assert_allclose(out["y"], 2 * X)


def test_predict_strings(shared_backend):
    text = np.array([b"face", b"gallery", "\u00e9t\u00e9".encode(), b"a\x00b"], dtype=object)
    out = shared_backend.predict(ModelRef("words"), {"text": text})
    assert list(out["upper"]) == [b"FACE", b"GALLERY", "\u00e9T\u00e9".encode(), b"A\x00B"]
    assert out["length"].dtype == np.int32
    assert list(out["length"]) == [4, 7, 5, 3]


def test_predict_asset_lookup(shared_backend):
    words = np.array([b"gallery", b"face", b"nobody", b"servable"], dtype=object)
    out = shared_backend.predict(ModelRef("vocabulary"), {"word": words})
    assert out["index"].dtype == np.int64
    assert list(out["index"]) == [2, 0, -1, 4]


def test_predict_async_runs_concurrently(shared_backend):
    pending = [shared_backend.predict_async(ModelRef("half_plus", version=v), {"x": X}) for v in (1, 2) * 4]
    _, not_done = wait(pending, timeout=30)
    assert not not_done
    for future, version in zip(pending, (1, 2) * 4, strict=True):
        np.testing.assert_allclose(future.result()["y"], 0.5 * X + version + 1)


def test_predict_empty_batch(shared_backend):
    out = shared_backend.predict(ModelRef("half_plus"), {"x": np.zeros([0], np.float32)})
    assert out["y"].shape == (0,)


# -- metadata and status ---------------------------------------------------------------------------


def test_metadata_describes_signature(shared_backend):
    meta = shared_backend.metadata(ModelRef("words"))
    assert (meta.model, meta.version, meta.name) == ("words", 1, "serving_default")
    assert set(meta.inputs) == {"text"}
    assert meta.inputs["text"].dtype == np.dtype(object)
    assert meta.inputs["text"].shape == (None,)
    assert meta.outputs["length"].dtype == np.int32
    assert meta.outputs["upper"].dtype == np.dtype(object)


@pytest.mark.parametrize(
    ("ref", "version"),
    [
        (ModelRef("half_plus"), 2),
        (ModelRef("half_plus", version=1), 1),
        (ModelRef("half_plus", label="stable"), 1),
        (ModelRef("half_plus_specific", signature="times_two"), 1),
    ],
    ids=str,
)
def test_metadata_resolves_version(labelled, ref, version):
    meta = labelled.metadata(ref)
    assert meta.version == version
    assert meta.name == ref.signature
    assert meta.inputs["x"].dtype == np.float32


@pytest.mark.parametrize(
    ("model", "versions"),
    [("half_plus", [2, 1]), ("half_plus_latest", [2]), ("half_plus_specific", [1]), ("vocabulary", [1])],
)
def test_status_follows_version_policy(shared_backend, model, versions):
    """Newest first, as TF Serving's GetModelStatus lists them."""
    statuses = shared_backend.model_status(model)
    assert [s.version for s in statuses] == versions
    assert {s.state for s in statuses} == {"AVAILABLE"}
    assert {s.error_code for s in statuses} == {"OK"}


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "inputs", "error", "words"),
    [
        (ModelRef("nobody"), {"x": X}, UnknownModel, "nobody"),
        (ModelRef("half_plus", version=7), {"x": X}, UnknownVersion, "7"),
        (ModelRef("half_plus_specific", version=2), {"x": X}, UnknownVersion, "2"),
        (ModelRef("half_plus", label="gold"), {"x": X}, UnknownLabel, "gold"),
        (ModelRef("half_plus_latest", label="stable"), {"x": X}, UnknownLabel, "stable"),
        (ModelRef("half_plus", signature="nope"), {"x": X}, UnknownSignature, "nope"),
        (ModelRef("half_plus"), {"z": X}, BadInput, "z"),
        (ModelRef("half_plus"), {"x": X, "z": X}, BadInput, "z"),
        (ModelRef("half_plus"), {}, BadInput, "x"),
        (ModelRef("half_plus"), {"x": X.astype(np.int32)}, BadInput, "int32"),
        (ModelRef("half_plus"), {"x": np.array([b"a"], dtype=object)}, BadInput, "string"),
        (ModelRef("words"), {"text": X}, BadInput, "float"),
    ],
    ids=lambda v: str(v) if isinstance(v, ModelRef) else None,
)
def test_predict_errors_map_to_gateway_errors(labelled, ref, inputs, error, words):
    with pytest.raises(error) as caught:
        labelled.predict(ref, inputs)
    assert type(caught.value) is error
    assert words in caught.value.message
    assert ref.name in caught.value.message


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        (ModelRef("nobody"), UnknownModel),
        (ModelRef("half_plus", version=9), UnknownVersion),
        (ModelRef("half_plus", label="gold"), UnknownLabel),
        (ModelRef("half_plus", signature="nope"), UnknownSignature),
    ],
    ids=str,
)
def test_metadata_errors(shared_backend, ref, error):
    with pytest.raises(error):
        shared_backend.metadata(ref)


def test_status_of_unknown_model(shared_backend):
    with pytest.raises(UnknownModel, match="nobody"):
        shared_backend.model_status("nobody")


def test_error_statuses_carry_http_codes(shared_backend):
    with pytest.raises(UnknownVersion) as caught:
        shared_backend.predict(ModelRef("half_plus", version=5), {"x": X})
    assert caught.value.status_code == 404
    with pytest.raises(BadInput) as caught:
        shared_backend.predict(ModelRef("half_plus"), {"bad": X})
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    ("ref", "version", "y0"),
    [
        (ModelRef("half_plus"), 2, 3.0),
        (ModelRef("half_plus", version=1), 1, 2.0),
        (ModelRef("half_plus", label="stable"), 1, 2.0),
        (ModelRef("half_plus", label="canary"), 2, 3.0),
        (ModelRef("half_plus_specific"), 1, 2.0),
    ],
    ids=str,
)
def test_predict_names_the_version_that_answered(labelled, ref, version, y0):
    served = labelled.predict_versioned(ref, {"x": X})
    assert served.version == version
    assert served.outputs["y"][0] == y0  # the answer is that version's (offsets 2.0 and 3.0)
    np.testing.assert_array_equal(served.outputs["y"], labelled.predict(ref, {"x": X})["y"])


def test_a_shape_the_signature_does_not_declare_is_fed_as_it_is(shared_backend):
    """TF Serving checks no shape before the session: y = 0.5 x + 3 of a [2, 2] x, though the signature says [None]."""
    out = shared_backend.predict(ModelRef("half_plus"), {"x": X.reshape(2, 2)})
    np.testing.assert_allclose(out["y"], 0.5 * X.reshape(2, 2) + 3)


# -- versions appearing, disappearing and labels moving --------------------------------------------


POLL = 0.2


def test_new_version_under_load_is_served_without_failures(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    ref = ModelRef("half_plus_latest")
    failures: list[BaseException] = []
    answers: list[float] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                answers.append(float(backend.predict(ref, {"x": np.zeros([1], np.float32)})["y"][0]))
            except BaseException as exc:  # every failure counts, whatever its kind
                failures.append(exc)

    def old_version_state() -> str | None:
        return {s.version: s.state for s in backend.model_status("half_plus_latest")}.get(2)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 20, 10, "calls answered before the new version")
        servables.export_half_plus(config_path.parent / "serving_models" / "half_plus" / "3", offset=4.0)
        written = time.monotonic()
        wait_for(lambda: 4.0 in answers, 10, "the new version serving")
        took = time.monotonic() - written
        # The old version is unloaded under the same load, and calls go on being answered after it.
        wait_for(old_version_state, 10, "version 2 unloaded", until=lambda state: state == "END")
        unloaded_at = len(answers)
        wait_for(lambda: len(answers) >= unloaded_at + 20, 10, "calls answered after the unload")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert set(answers) == {3.0, 4.0}
    # Served within two poll intervals of the write, plus the time to load one small model.
    assert took < 2 * POLL + 1.5
    states = {s.version: s.state for s in backend.model_status("half_plus_latest")}
    assert states == {2: "END", 3: "AVAILABLE"}


def test_removed_version_is_unloaded(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    shutil.rmtree(config_path.parent / "serving_models" / "half_plus" / "2")

    def unloaded() -> bool:
        return {s.version: s.state for s in backend.model_status("half_plus")}.get(2) == "END"

    wait_for(unloaded, 5, "version 2 unloaded")
    with pytest.raises(UnknownVersion):
        backend.predict(ModelRef("half_plus", version=2), {"x": X})
    np.testing.assert_allclose(backend.predict(ModelRef("half_plus"), {"x": X})["y"], 0.5 * X + 2)


def test_label_moves_when_config_file_changes(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    ref = ModelRef("half_plus", label="stable")
    servables.give_labels(runtime_of(backend))
    np.testing.assert_allclose(backend.predict(ref, {"x": X})["y"], 0.5 * X + 2)
    config_path.write_text(servables.labelled_config({"stable": 2, "canary": 2}))

    def moved() -> bool:
        return float(backend.predict(ref, {"x": X})["y"][0]) == 3.0

    wait_for(moved, 5, "stable answered by version 2")


def test_label_onto_unloaded_version_is_refused(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    servables.give_labels(runtime_of(backend))
    config_path.write_text(servables.labelled_config({"stable": 9, "canary": 1}))
    wait_for(lambda: runtime_of(backend).config_refusal is not None, 5, "the config refused")
    assert "version 9 of model half_plus" in runtime_of(backend).config_refusal
    # The file is refused whole: canary's move, valid on its own, is not applied either.
    np.testing.assert_allclose(backend.predict(ModelRef("half_plus", label="stable"), {"x": X})["y"], 0.5 * X + 2)
    np.testing.assert_allclose(backend.predict(ModelRef("half_plus", label="canary"), {"x": X})["y"], 0.5 * X + 3)


def test_model_added_and_removed_with_config(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    text = config_path.read_text().replace('name: "identity"', 'name: "echo"')
    config_path.write_text(text)

    def swapped() -> bool:
        try:  # START and LOADING come first: the model serves once a version is AVAILABLE
            return "AVAILABLE" in {status.state for status in backend.model_status("echo")}
        except UnknownModel:
            return False

    wait_for(swapped, 5, "echo available")
    np.testing.assert_array_equal(backend.predict(ModelRef("echo"), {"x": X})["y"], X)
    with pytest.raises(UnknownModel):
        backend.predict(ModelRef("identity"), {"x": X})
    # The model that left the config keeps its END state, as TF Serving's status monitor does.
    assert [(s.version, s.state) for s in backend.model_status("identity")] == [(1, "END")]


def test_broken_config_file_keeps_current_models(make_backend, config_path):
    backend = make_backend(config_path, poll_interval=POLL)
    config_path.write_text("model_config_list { config { name: ")
    # The poller has read the broken file (and said why it does not apply), not merely slept through polls.
    wait_for(lambda: runtime_of(backend).config_refusal, 5, "the broken file refused")
    np.testing.assert_allclose(backend.predict(ModelRef("half_plus"), {"x": X})["y"], 0.5 * X + 3)
