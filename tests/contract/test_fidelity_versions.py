"""TF Serving's version management, the same expectations of the embedded runtime and of the protocol double.

Availability through a failed load (availability_preserving_policy_test.cc, aspired_versions_manager_test.cc's
retry tests), what counts as a version (file_system_storage_path_source_test.cc), a vanished base path,
labels checked before a config applies (server_core_test.cc's AssignLabel* tests), the config re-applied on
every poll (tensorflow_model_server_test.py's config reload tests), refused configs at start and on reload,
and the status list. Loopback only, every wait bounded.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_service_pb2_grpc

from app.errors import ServingStatus, ServingUnavailable, UnknownVersion
from app.model_server import reload_request
from app.serving.base import ModelRef
from app.serving.model_config import parse_model_config
from tests.support import servables
from tests.support.fidelity import (
    KINDS,
    POLL,
    QUICK_RETRIES,
    broken_copy_of,
    copy_of,
    publish,
    servers,  # noqa: F401  (fixture)
    start_server,
    states,
)
from tests.support.waiting import wait_for

X = np.array([0.0, 1.0, -4.0], dtype=np.float32)
LATEST = ModelRef("half_plus_latest")
NOT_AVAILABLE = "which is not currently available for inference"

pytestmark = pytest.mark.parametrize("kind", KINDS)


def _half_plus(config_path):
    return config_path.parent / "serving_models" / "half_plus"


def _retries(caplog: pytest.LogCaptureFixture, model: str, version: int) -> list[str]:
    """The load retries of ``version`` of ``model`` that the server has logged so far."""
    servable = f"{{name: {model} version: {version}}}"
    return [m for m in caplog.messages if m.startswith("Retrying of Loading servable: " + servable)]


def _answer(backend, ref: ModelRef = LATEST) -> float:
    """The offset of the version that answered (y = 0.5 x + offset)."""
    return float(backend.predict(ref, {"x": np.zeros([1], np.float32)})["y"][0])


# -- availability through a failed load --------------------------------------------------------------


def test_broken_version_published_under_load_keeps_the_good_one_serving(kind, servers, config_path, caplog):  # noqa: F811
    """8 clients call "latest" while a corrupt version 3 is published: none fails, version 2 answers every call,
    also while version 3 is being tried, the load is tried 1 + max_num_load_retries times, and the status carries
    the loader's DATA_LOSS."""
    server = servers(kind, config_path, **QUICK_RETRIES)
    caplog.set_level(logging.INFO, logger="app.serving.runtime")
    failures: list[BaseException] = []
    answers: list[float] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answers.append(_answer(server.backend))
            except BaseException as exc:  # every failure counts, whatever its kind
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(answers) >= 25, 10, "calls answered before version 3")
        before = len(answers)
        broken = publish(_half_plus(config_path), 3, broken_copy_of(_half_plus(config_path) / "2"))
        # Version 3 is LOADING for only ~0.4 s (three tries): too short to be sure to see it while 8 clients keep
        # the GIL busy. Its end, the retries logged and the calls answered meanwhile say it was tried under load.
        wait_for(lambda: states(server.backend, "half_plus_latest")[0][:2] == (3, "END"), 10, "version 3 given up")
        during = len(answers) - before
        given_up = len(answers)
        wait_for(lambda: len(answers) >= given_up + 25, 10, "calls answered after version 3 was given up")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    print(f"broken version under load ({kind}): {len(answers)} calls answered, {len(failures)} failed")
    assert failures == []
    assert len(answers) > 50 and set(answers) == {3.0}  # version 2's offset, throughout
    assert during > 0  # answered while version 3 was being tried
    status = server.backend.model_status("half_plus_latest")
    assert [(s.version, s.state, s.error_code) for s in status] == [(3, "END", "DATA_LOSS"), (2, "AVAILABLE", "OK")]
    assert status[0].error_message == f"Can't parse {broken / 'saved_model.pb'} as binary proto"
    assert _retries(caplog, "half_plus_latest", 3) == [
        "Retrying of Loading servable: {name: half_plus_latest version: 3} retry: 1",
        "Retrying of Loading servable: {name: half_plus_latest version: 3} retry: 2",
    ]


def test_a_good_version_after_a_broken_one_replaces_the_serving_one(kind, servers, config_path):  # noqa: F811
    server = servers(kind, config_path, max_load_retries=0)
    base = _half_plus(config_path)
    publish(base, 3, broken_copy_of(base / "2"))
    wait_for(lambda: states(server.backend, "half_plus_latest")[0][1] == "END", 5, "version 3 failed")
    assert _answer(server.backend) == 3.0
    servables.export_half_plus(base / "4", offset=5.0)
    wait_for(lambda: _answer(server.backend) == 5.0, 5, "version 4 served")
    wait_for(lambda: states(server.backend, "half_plus_latest")[-1] == (2, "END", "OK"), 5, "version 2 unloaded")
    assert states(server.backend, "half_plus_latest") == [
        (4, "AVAILABLE", "OK"),
        (3, "END", "DATA_LOSS"),
        (2, "END", "OK"),
    ]


def test_a_failed_version_is_not_tried_again_under_its_number_but_a_newer_one_is(kind, servers, config_path):  # noqa: F811
    """UnaspireThenImmediatelyReaspire: version 2 serves on unaspired beside the failed 3; removing 3 asks for 2
    again, a request TF Serving holds back, so 3 stays failed even when a good 3 is put back. A 4 is taken."""
    server = servers(kind, config_path, max_load_retries=0)
    base = _half_plus(config_path)
    publish(base, 3, broken_copy_of(base / "2"))
    wait_for(lambda: states(server.backend, "half_plus_latest")[0] == (3, "END", "DATA_LOSS"), 5, "version 3 failed")
    shutil.rmtree(base / "3")
    server.runtime.poll_once()  # a poll has seen it gone (the poller's own polls may run beside it)
    publish(base, 3, copy_of(base / "1"))
    server.runtime.poll_once()  # and the good 3 back
    assert states(server.backend, "half_plus_latest") == [(3, "END", "DATA_LOSS"), (2, "AVAILABLE", "OK")]
    assert _answer(server.backend) == 3.0
    publish(base, 4, copy_of(base / "1"))
    wait_for(lambda: _answer(server.backend) == 2.0, 5, "version 4 served")


def test_a_load_retried_until_its_files_arrive_succeeds(kind, servers, config_path, caplog):  # noqa: F811
    """RetryOnLoadErrorFinallySucceeds: the version folder appears empty, its files land during the retries."""
    caplog.set_level(logging.INFO, logger="app.serving.runtime")
    server = servers(kind, config_path, max_load_retries=20, load_retry_interval=0.1)
    base = _half_plus(config_path)
    (base / "3").mkdir()
    wait_for(lambda: (3, "LOADING", "OK") in states(server.backend, "half_plus_latest"), 5, "version 3 loading")
    wait_for(lambda: _retries(caplog, "half_plus_latest", 3)[1:], 5, "two failed tries of version 3")
    shutil.copytree(base / "1", base / "3", dirs_exist_ok=True)
    wait_for(lambda: _answer(server.backend) == 2.0, 5, "version 3 (a copy of 1) served")
    assert states(server.backend, "half_plus_latest")[0] == (3, "AVAILABLE", "OK")


# -- what counts as a version --------------------------------------------------------------------------


def test_every_numeric_child_is_a_version_and_a_broken_one_is_reported(kind, servers, config_path):  # noqa: F811
    server = servers(kind, config_path, max_load_retries=0)
    base = _half_plus(config_path)
    (base / "v9").mkdir()  # not a number: not a version
    publish(base, "9.tmp", copy_of(base / "1"))
    (base / "3").mkdir()  # a number: a version, though nothing is in it
    wait_for(lambda: states(server.backend, "half_plus_latest")[0][:2] == (3, "END"), 5, "version 3 failed")
    status = server.backend.model_status("half_plus_latest")[0]
    assert status.error_code == "NOT_FOUND"
    assert status.error_message == (
        "Specified file path does not appear to contain a SavedModel bundle (should have a file called "
        f"`saved_model.pb`)\nSpecified file path: {base / '3'}"
    )
    assert _answer(server.backend) == 3.0  # version 2 serves on
    publish(base, "0004", copy_of(base / "1"))  # leading zeros: version 4
    wait_for(lambda: _answer(server.backend) == 2.0, 5, "version 4 served")
    (base / "5").write_text("a file, not a folder", encoding="utf-8")
    wait_for(lambda: states(server.backend, "half_plus_latest")[0][:2] == (5, "END"), 5, "version 5 failed")
    status = server.backend.model_status("half_plus_latest")[0]
    assert (status.error_code, status.error_message) == ("FAILED_PRECONDITION", f"{base / '5'}; Not a directory")
    assert _answer(server.backend) == 2.0


def test_a_vanished_base_path_keeps_everything_serving(kind, servers, config_path, caplog):  # noqa: F811
    """TF Serving's source fails the whole poll when a base path cannot be listed: it logs, and nothing changes."""
    server = servers(kind, config_path)
    caplog.set_level(logging.ERROR, logger="app.serving.runtime")
    identity = config_path.parent / "serving_models" / "identity"
    aside = identity.with_name("identity.moved")
    identity.rename(aside)
    wait_for(lambda: "Could not find base path" in caplog.text, 5, "the failed poll logged")
    np.testing.assert_array_equal(server.backend.predict(ModelRef("identity"), {"x": X})["y"], X)
    assert states(server.backend, "identity") == [(1, "AVAILABLE", "OK")]
    # No poll succeeds meanwhile, so a new version of another model waits too.
    servables.export_half_plus(_half_plus(config_path) / "3", offset=4.0)
    server.runtime.poll_once()  # a poll after the new version landed (the poller's may run beside it)
    assert _answer(server.backend) == 3.0
    aside.rename(identity)
    wait_for(lambda: _answer(server.backend) == 4.0, 5, "version 3 served once the poll succeeds again")


# -- the server refuses to start -----------------------------------------------------------------------


def _refusal_at_start(kind, config_path, **flags) -> str:
    """The message a server that does not start gives: the backend's error, or the double's status."""
    with pytest.raises((ServingUnavailable, ServingStatus)) as caught:
        start_server(kind, config_path, **flags)
    if isinstance(caught.value, ServingStatus):
        return f"{caught.value.status.name}: {caught.value.message}"
    return caught.value.message.split(f"{config_path}: ", 1)[1]


def test_labels_at_start_are_refused_without_the_flag(kind, config_path):
    """At start no version is AVAILABLE yet, so any label is refused (labels are checked in name order: canary)."""
    config_path.write_text(servables.labelled_config(), encoding="utf-8")
    assert _refusal_at_start(kind, config_path) == (
        f"FAILED_PRECONDITION: Request to assign label to version 2 of model half_plus, {NOT_AVAILABLE}"
    )


def test_labels_at_start_are_given_with_the_flag(kind, servers, config_path):  # noqa: F811
    config_path.write_text(servables.labelled_config(), encoding="utf-8")
    server = servers(kind, config_path, allow_labels_for_unavailable=True)
    assert _answer(server.backend, ModelRef("half_plus", label="stable")) == 2.0
    assert _answer(server.backend, ModelRef("half_plus", label="canary")) == 3.0


def test_a_relative_base_path_is_refused(kind, config_path):
    config_path.write_text(
        servables.CONFIG.replace('base_path: "/models/identity"', 'base_path: "serving_models/identity"'), "utf-8"
    )
    assert _refusal_at_start(kind, config_path) == (
        "INVALID_ARGUMENT: Expected model identity to have an absolute path or URI; "
        "got base_path()=serving_models/identity"
    )


def test_a_broken_newest_version_at_start_stops_the_server(kind, config_path):
    """half_plus_latest has only the broken version to load; half_plus ("all") serves 1 and 2, so it counts as up."""
    base = _half_plus(config_path)
    broken = publish(base, 3, broken_copy_of(base / "2"))
    assert _refusal_at_start(kind, config_path, max_load_retries=0) == (
        "UNKNOWN: 1 servable(s) did not become available: "
        "{{{name: half_plus_latest version: 3} due to error: "
        f"DATA_LOSS: Can't parse {broken}/saved_model.pb as binary proto}}, }}"
    )


# -- labels on reload ------------------------------------------------------------------------------


def test_a_label_on_a_missing_version_refuses_the_whole_config_until_the_version_is_there(
    kind,
    servers,  # noqa: F811
    config_path,
):
    """Refused whole (the identity model it drops stays), reported, and applied by a later poll of the same,
    untouched file once version 3 is AVAILABLE."""
    server = servers(kind, config_path)
    servables.give_labels(server.runtime)
    text = servables.labelled_config({"stable": 1, "canary": 3}).replace('name: "identity"', 'name: "echo"')
    config_path.write_text(text, encoding="utf-8")
    wait_for(lambda: server.runtime.config_refusal is not None, 5, "the config refused")
    assert server.runtime.config_refusal == (
        f"{config_path}: FAILED_PRECONDITION: Request to assign label to version 3 of model half_plus, {NOT_AVAILABLE}"
    )
    server.runtime.poll_once()  # refused at every poll: nothing of it applies
    assert server.runtime.config_refusal is not None
    np.testing.assert_array_equal(server.backend.predict(ModelRef("identity"), {"x": X})["y"], X)
    assert _answer(server.backend, ModelRef("half_plus", label="canary")) == 3.0  # canary still on version 2
    if kind == "local":
        assert server.backend.config_state().refused == server.runtime.config_refusal
    servables.export_half_plus(_half_plus(config_path) / "3", offset=4.0)
    wait_for(lambda: server.runtime.config_refusal is None, 5, "the same file applied once version 3 serves")
    assert _answer(server.backend, ModelRef("half_plus", label="canary")) == 4.0
    np.testing.assert_array_equal(server.backend.predict(ModelRef("echo"), {"x": X})["y"], X)


def test_with_the_flag_a_new_label_may_wait_for_its_version_but_a_label_is_not_moved_onto_one(
    kind,
    servers,  # noqa: F811
    config_path,
):
    """AssignLabelToUnavailableVersionAllowed and AssignExistingLabelToUnavailableVersionDisallowed."""
    server = servers(kind, config_path, allow_labels_for_unavailable=True)
    servables.give_labels(server.runtime)
    config_path.write_text(servables.labelled_config({"stable": 1, "canary": 2, "next": 3}), encoding="utf-8")
    server.runtime.reload_config()  # a new label on a version not there yet: taken
    with pytest.raises(UnknownVersion, match=r"Specific\(half_plus, 3\)"):
        server.backend.predict(ModelRef("half_plus", label="next"), {"x": X})
    config_path.write_text(servables.labelled_config({"stable": 3, "canary": 2, "next": 3}), encoding="utf-8")
    with pytest.raises(ServingStatus, match=f"version 3 of model half_plus, {NOT_AVAILABLE}"):
        server.runtime.reload_config()  # moving stable onto it: refused
    assert _answer(server.backend, ModelRef("half_plus", label="stable")) == 2.0
    servables.export_half_plus(_half_plus(config_path) / "3", offset=4.0)
    wait_for(lambda: server.runtime.config_refusal is None, 5, "the move applied once version 3 serves")
    assert _answer(server.backend, ModelRef("half_plus", label="stable")) == 4.0
    assert _answer(server.backend, ModelRef("half_plus", label="next")) == 4.0


def test_force_allowing_labels_lets_a_label_move_onto_a_version_not_there(kind, servers, config_path):  # noqa: F811
    """AssignExistingLabelToUnavailableVersionAllowed (--force_allow_any_version_labels_for_unavailable_models)."""
    server = servers(kind, config_path, force_allow_labels_for_unavailable=True)
    servables.give_labels(server.runtime)
    config_path.write_text(servables.labelled_config({"stable": 3, "canary": 2}), encoding="utf-8")
    server.runtime.reload_config()
    with pytest.raises(UnknownVersion, match=r"Specific\(half_plus, 3\)"):
        server.backend.predict(ModelRef("half_plus", label="stable"), {"x": X})


def test_a_model_removed_and_added_again_serves_again(kind, servers, config_path):  # noqa: F811
    """ReloadConfigHandlesLoadingAPreviouslyUnloadedModel: its old END states give way to a fresh load."""
    server = servers(kind, config_path, poll_interval=0)
    without = parse_model_config(
        servables.CONFIG.replace('name: "identity"', 'name: "echo"'), path=config_path, check_paths=False
    )
    server.runtime.apply_config(without)
    assert states(server.backend, "identity") == [(1, "END", "OK")]
    server.runtime.apply_config(parse_model_config(servables.CONFIG, path=config_path, check_paths=False))
    assert states(server.backend, "identity") == [(1, "AVAILABLE", "OK")]
    np.testing.assert_array_equal(server.backend.predict(ModelRef("identity"), {"x": X})["y"], X)


def test_reload_config_request_is_refused_whole(kind, servers, config_path):  # noqa: F811
    """HandleReloadConfigRequest with a label on a version that is not there: FAILED_PRECONDITION, nothing applied."""
    server = servers(kind, config_path, poll_interval=0)
    text = servables.labelled_config({"stable": 7}).replace('name: "identity"', 'name: "echo"')
    expected = (
        grpc.StatusCode.FAILED_PRECONDITION,
        f"Request to assign label to version 7 of model half_plus, {NOT_AVAILABLE}",
    )
    if server.double is not None:
        with grpc.insecure_channel(server.double.address) as channel, pytest.raises(grpc.RpcError) as caught:
            model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(reload_request(text))
        assert (caught.value.code(), caught.value.details()) == expected
    else:
        with pytest.raises(ServingStatus) as caught:
            server.runtime.apply_config(parse_model_config(text, path=config_path, check_paths=False))
        assert (caught.value.status, caught.value.message) == expected
    assert server.runtime.labels("half_plus") == {}
    np.testing.assert_array_equal(server.backend.predict(ModelRef("identity"), {"x": X})["y"], X)


def test_without_config_polling_the_file_is_read_once(kind, servers, config_path):  # noqa: F811
    """testModelConfigReloadWithZeroPollPeriod: with no poll period the server keeps its first config."""
    server = servers(kind, config_path, poll_interval=0)
    config_path.write_text(servables.CONFIG.replace('name: "identity"', 'name: "echo"'), encoding="utf-8")
    # The sleep is the test: a poll that never happens has no event to wait for, so wait out three of the
    # poll intervals the other tests run with, and see the first config still serving.
    time.sleep(3 * POLL)
    np.testing.assert_array_equal(server.backend.predict(ModelRef("identity"), {"x": X})["y"], X)


# -- status ------------------------------------------------------------------------------------------


def test_status_lists_newest_first_and_keeps_end_states(kind, servers, config_path):  # noqa: F811
    server = servers(kind, config_path)
    assert states(server.backend, "half_plus") == [(2, "AVAILABLE", "OK"), (1, "AVAILABLE", "OK")]
    config_path.write_text(servables.CONFIG.replace('name: "half_plus"\n', 'name: "half_plus_gone"\n'), "utf-8")
    wait_for(lambda: states(server.backend, "half_plus")[0][1] == "END", 5, "half_plus unloaded")
    assert states(server.backend, "half_plus") == [(2, "END", "OK"), (1, "END", "OK")]
