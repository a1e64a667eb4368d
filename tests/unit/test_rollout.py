"""Canary rollouts without models: the split and its stickiness, pins, skipped arms, fallbacks, shadows, measures,
the pipeline file's two keys, and the pipeline file read again when it changes.

Stage calls are plain functions of the pins they get; the server is a status board the test edits.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from app.errors import BadInput, ModelFailure, UnknownLabel, UnknownModel, UnknownVersion
from app.pipeline import Face, Match
from app.pipeline_config import PipelineConfigError, parse_pipeline_config
from app.rollout import (
    DEFAULT_ARM,
    MEASURES,
    PINNED_ARM,
    Pin,
    Rollouts,
    box_iou,
    detect_agreement,
    encode_agreement,
    search_agreement,
    translate_agreement,
)
from app.serving.base import Backend, VersionStatus
from app.web.extensions import PipelineFile

CLIENTS = [f"addr:10.{i // 250}.{i % 250}.7" for i in range(2000)]
SEARCH = "latent_search_model"


class StatusBoard(Backend):
    """A server that answers only GetModelStatus, from versions the test makes available or takes away."""

    def __init__(self, available: dict[str, set[int]]) -> None:
        super().__init__(async_workers=4)
        self.available = available
        self.status_calls = 0

    def model_status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        self.status_calls += 1
        if name not in self.available:
            raise UnknownModel(f"Could not find any versions of model {name}")
        return [VersionStatus(version, "AVAILABLE") for version in sorted(self.available[name], reverse=True)]

    def predict(self, ref, inputs, timeout=None):
        raise AssertionError("routing tests call no model")

    def metadata(self, ref):
        raise AssertionError("routing tests read no metadata")

    def get_model_metadata(self, ref):
        raise AssertionError("routing tests read no metadata")

    def classify(self, *args, **kwargs):
        raise AssertionError("routing tests call no model")

    def regress(self, *args, **kwargs):
        raise AssertionError("routing tests call no model")


class RecordingObserver:
    """Keeps what a rollout reports, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool, str | None]] = []
        self.fallbacks: list[tuple[str, str, str]] = []
        self.shadows: list[tuple[str, str, str, str]] = []
        self.agreements: list[tuple[str, str, str, str, float]] = []
        self.changed = threading.Condition()

    def stage_call(self, stage, arm, seconds, error):
        self.calls.append((stage, arm, seconds is not None, error))

    def fallback(self, stage, arm, to):
        self.fallbacks.append((stage, arm, to))

    def shadow_call(self, stage, arm, shadow, outcome):
        with self.changed:
            self.shadows.append((stage, arm, shadow, outcome))
            self.changed.notify_all()

    def agreement(self, stage, arm, shadow, measure, value):
        self.agreements.append((stage, arm, shadow, measure, value))

    def wait_for_shadows(self, count: int, timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.shadows) >= count, timeout), self.shadows


@pytest.fixture
def board():
    backend = StatusBoard({SEARCH: {1, 2}})
    yield backend
    backend.close()


def rollouts(board: StatusBoard, search: str, labels: dict | None = None, observer=None, **options) -> Rollouts:
    config = parse_pipeline_config(f"[search]\n{search}\n")
    known = {SEARCH: {"stable": 1, "canary": 2}} if labels is None else labels
    return Rollouts(config, board, observer=observer, labels=lambda: known, **options)


def arm_of(routed: Rollouts, client: str | None, pins=None) -> str:
    return routed.route(client, pins).arm("search").name


def served_by(pins) -> str:
    """A stage call that answers with what it was pinned to."""
    pin = pins.get("search")
    if pin is None:
        return "latest"
    return f"v{pin.version}" if pin.version is not None else pin.label


# -- the split ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "traffic",
    [
        {"stable": 90, "canary": 10},
        {"stable": 50, "canary": 50},
        {"stable": 70, "canary": 20, "1": 10},
        {"stable": 97, "canary": 3},
    ],
)
def test_weights_are_honoured_within_3_percent_over_2000_clients(board, traffic):
    arms = ", ".join(f'"{name}" = {weight}' for name, weight in traffic.items())
    routed = rollouts(board, f"traffic = {{ {arms} }}")
    counts = Counter(arm_of(routed, client) for client in CLIENTS)
    shares = {name: 100 * counts[name] / len(CLIENTS) for name in traffic}
    assert all(abs(shares[name] - weight) <= 3 for name, weight in traffic.items()), shares
    assert sum(counts.values()) == len(CLIENTS) and set(counts) == set(traffic)


def test_a_client_keeps_its_arm_in_every_process(board):
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }")
    first = {client: arm_of(routed, client) for client in CLIENTS[:300]}
    assert all(arm_of(routed, client) == arm for client, arm in first.items() for _ in range(3))
    # Another worker, or the same one after a restart: the same answer, the hash is keyed by the rollout alone.
    again = rollouts(board, "traffic = { stable = 50, canary = 50 }")
    assert {client: arm_of(again, client) for client in first} == first
    assert set(first.values()) == {"stable", "canary"}


def test_raising_the_canary_keeps_the_clients_it_had(board):
    on_canary = []
    for weight in (1, 10, 25, 50, 99):
        routed = rollouts(board, f"traffic = {{ stable = {100 - weight}, canary = {weight} }}")
        on_canary.append({client for client in CLIENTS if arm_of(routed, client) == "canary"})
    assert all(earlier <= later for earlier, later in itertools.pairwise(on_canary))
    assert len(on_canary[0]) < len(on_canary[-1])


def test_new_arm_names_are_a_new_rollout_drawn_afresh(board):
    one = rollouts(board, "traffic = { stable = 80, canary = 20 }")
    other = rollouts(board, "traffic = { stable = 80, canary2 = 20 }", labels={SEARCH: {"stable": 1, "canary2": 2}})
    first = {client for client in CLIENTS if arm_of(one, client) == "canary"}
    second = {client for client in CLIENTS if arm_of(other, client) == "canary2"}
    # Drawn independently: about a fifth of one canary's clients are in the other's, not all of them.
    assert len(first & second) < 0.35 * len(first)


def test_no_client_identity_draws_at_random(board):
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }")
    assert set(arm_of(routed, None) for _ in range(200)) == {"stable", "canary"}


def test_a_pin_in_the_request_wins_over_the_split(board):
    routed = rollouts(board, "traffic = { stable = 100 }")
    routing = routed.route("addr:10.0.0.1", {"search": Pin(label="canary")})
    assert routing.call("search", served_by) == "canary"
    assert routing.served == {"search": PINNED_ARM}
    pinned_version = routed.route("addr:10.0.0.1", {"search": Pin(version=2)})
    assert pinned_version.call("search", served_by) == "v2"


def test_stages_without_a_rollout_ask_the_servable_itself(board):
    routed = rollouts(board, "traffic = { stable = 100 }")
    routing = routed.route("addr:10.0.0.1", {})
    assert routing.call("detect", lambda pins: "detect" not in pins) is True
    assert routing.served == {"detect": DEFAULT_ARM}


# -- availability --------------------------------------------------------------------------------------


def test_an_unavailable_arm_is_skipped_logged_once_and_shown(board, caplog):
    board.available[SEARCH] = {1}  # the canary's version 2 is not loaded
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }", check_interval=0.0)
    with caplog.at_level(logging.WARNING, logger="app.rollout"):
        arms = Counter(arm_of(routed, client) for client in CLIENTS[:400])
        routed.health.look()
        routed.health.look()
    assert arms == {"stable": 400}
    skipped = [record.getMessage() for record in caplog.records if "is skipped" in record.getMessage()]
    assert skipped == [f"rollout: arm 'canary' (label 'canary' of {SEARCH}) is skipped: version 2 of {SEARCH} "
                       "is not available"]  # fmt: skip
    canary = routed.describe()["search"]["arms"][1]
    assert canary == {
        "name": "canary",
        "weight": 50,
        "label": "canary",
        "available": False,
        "serves_version": 2,
        "reason": f"version 2 of {SEARCH} is not available",
    }
    board.available[SEARCH] = {1, 2}
    with caplog.at_level(logging.INFO, logger="app.rollout"):
        routed.health.look()
    assert "is available again" in caplog.records[-1].getMessage()
    assert Counter(arm_of(routed, client) for client in CLIENTS[:400]).keys() == {"stable", "canary"}


def test_a_label_the_server_does_not_know_is_skipped(board):
    routed = rollouts(board, "traffic = { stable = 90, ghost = 10 }")
    assert {arm_of(routed, client) for client in CLIENTS[:500]} == {"stable"}
    assert routed.describe()["search"]["arms"][1]["reason"] == f"{SEARCH} has no version label 'ghost'"


def test_with_the_stable_arm_gone_its_clients_go_on_in_order_then_to_the_default(board):
    routed = rollouts(board, 'traffic = { "3" = 60, stable = 30, canary = 10 }', check_interval=0.0)
    assert {arm_of(routed, client) for client in CLIENTS[:500]} == {"stable", "canary"}
    board.available[SEARCH] = set()
    routed.health.look()
    assert {arm_of(routed, client) for client in CLIENTS[:500]} == {DEFAULT_ARM}


def test_labels_that_cannot_be_read_count_as_available_until_a_call_finds_them_gone(board):
    config = parse_pipeline_config("[search]\ntraffic = { stable = 50, canary = 50 }\n")
    routed = Rollouts(config, board, labels=lambda: None, check_interval=60)
    client = next(client for client in CLIENTS if arm_of(routed, client) == "canary")

    def canary_gone(pins):
        if pins["search"].label == "canary":
            raise UnknownLabel(f"{SEARCH}: Unrecognized servable version label: canary")
        return served_by(pins)

    assert routed.route(client).call("search", canary_gone) == "stable"
    # Skipped from now on (until the next look), without a failed call first.
    assert arm_of(routed, client) == "stable"


def test_the_server_is_asked_at_most_once_per_interval(board):
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }", check_interval=60)
    for client in CLIENTS[:200]:
        routed.route(client)
    assert board.status_calls == 1


# -- fallbacks -----------------------------------------------------------------------------------------


def test_a_failing_canary_is_answered_by_the_stable_arm_and_counted(board):
    observer = RecordingObserver()
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }", observer=observer)
    client = next(client for client in CLIENTS if arm_of(routed, client) == "canary")

    def canary_breaks(pins):
        if pins["search"].label == "canary":
            raise ModelFailure(f"{SEARCH}: INTERNAL: the canary broke")
        return served_by(pins)

    routing = routed.route(client)
    assert routing.call("search", canary_breaks) == "stable"
    assert routing.served == {"search": "stable"}
    assert observer.calls == [("search", "canary", True, "model_failure"), ("search", "stable", True, None)]
    assert observer.fallbacks == [("search", "canary", "stable")]
    assert arm_of(routed, client) == "canary"  # an error is counted, not a reason to skip the arm


def test_the_stable_arms_own_error_is_the_answer(board):
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }")
    client = next(client for client in CLIENTS if arm_of(routed, client) == "stable")
    calls = []

    def refuses(pins):
        calls.append(served_by(pins))
        raise BadInput(f"{SEARCH}: input must have at least k columns. Had 3, needed 5")

    with pytest.raises(BadInput):
        routed.route(client).call("search", refuses)
    assert calls == ["stable"]
    canary_client = next(client for client in CLIENTS if arm_of(routed, client) == "canary")
    calls.clear()
    with pytest.raises(BadInput):
        routed.route(canary_client).call("search", refuses)
    assert calls == ["canary", "stable"]  # the canary's error, then the stable arm's answer (the same error)


def test_a_stable_arm_found_gone_passes_the_request_on(board):
    routed = rollouts(board, "traffic = { stable = 50, canary = 50 }", check_interval=60)
    client = next(client for client in CLIENTS if arm_of(routed, client) == "stable")

    def stable_gone(pins):
        if pins["search"].label == "stable":
            raise UnknownVersion(f"{SEARCH}: Servable not found for request: Specific({SEARCH}, 1)")
        return served_by(pins)

    assert routed.route(client).call("search", stable_gone) == "canary"


def test_pinned_and_default_calls_are_not_retried(board):
    routed = rollouts(board, "traffic = { stable = 100 }")
    calls = []

    def fails(pins):
        calls.append(served_by(pins))
        raise ModelFailure("broken")

    with pytest.raises(ModelFailure):
        routed.route("addr:1", {"search": Pin(label="canary")}).call("search", fails)
    with pytest.raises(ModelFailure):
        routed.route("addr:1").call("detect", fails)
    assert calls == ["canary", "latest"]


# -- shadows -------------------------------------------------------------------------------------------


def _matches(*names: str) -> tuple[list[Match], int]:
    return [Match(i, name, float(i)) for i, name in enumerate(names)], 1


def test_a_shadow_copy_is_sent_once_the_answer_is_ready_and_measured(board):
    observer = RecordingObserver()
    routed = rollouts(board, 'traffic = { stable = 100 }\nshadow = "canary"', observer=observer)
    asked = []

    def search(pins):
        asked.append(served_by(pins))
        return _matches("a", "b", "c", "d") if pins["search"].label == "stable" else _matches("a", "x", "c", "y")

    routing = routed.route("addr:10.0.0.1")
    answer = routing.call("search", search)
    routing.shadow("search", search, answer)
    assert asked == ["stable"] and observer.shadows == []  # nothing sent before the whole answer is ready
    routing.start_shadows()
    observer.wait_for_shadows(1)
    assert asked == ["stable", "canary"]
    assert observer.shadows == [("search", "stable", "canary", "compared")]
    assert observer.agreements == [("search", "stable", "canary", "topk_overlap", 0.5)]
    assert answer == _matches("a", "b", "c", "d")  # the answer is the stable arm's, untouched


def test_no_shadow_copy_of_a_pinned_request_or_of_the_shadow_arms_own_answer(board, monkeypatch):
    observer = RecordingObserver()
    routed = rollouts(board, 'traffic = { stable = 50, canary = 50 }\nshadow = "canary"', observer=observer)

    def at_once(fn, *args):  # the board's pool runs each job before submit returns: no copy can be still on its way
        done = Future()
        done.set_result(fn(*args))
        return done

    monkeypatch.setattr(board, "submit", at_once)

    def search(pins):
        return _matches(served_by(pins))

    canary_client = next(client for client in CLIENTS if arm_of(routed, client) == "canary")
    stable_client = next(client for client in CLIENTS if arm_of(routed, client) == "stable")
    for routing in (routed.route(canary_client), routed.route(CLIENTS[0], {"search": Pin(version=1)})):
        answer = routing.call("search", search)
        routing.shadow("search", search, answer)
        routing.start_shadows()
    assert observer.shadows == []
    routing = routed.route(stable_client)  # the control: a stable answer is copied, and reported at once
    routing.shadow("search", search, routing.call("search", search))
    routing.start_shadows()
    assert observer.shadows == [("search", "stable", "canary", "compared")]


def test_shadow_copies_beyond_the_limit_are_dropped_and_failures_counted(board):
    observer = RecordingObserver()
    routed = rollouts(board, 'traffic = { stable = 100 }\nshadow = "canary"', observer=observer, shadows_in_flight=1)
    release = threading.Event()

    def slow_shadow(pins):
        if pins["search"].label == "canary":
            release.wait(5)
            raise ModelFailure("the shadow broke")
        return _matches("a")

    for _ in range(3):
        routing = routed.route("addr:1")
        routing.shadow("search", slow_shadow, routing.call("search", slow_shadow))
        routing.start_shadows()
    observer.wait_for_shadows(2)
    assert [outcome for *_, outcome in observer.shadows] == ["dropped", "dropped"]
    release.set()
    observer.wait_for_shadows(3)
    assert observer.shadows[-1] == ("search", "stable", "canary", "failed")
    assert observer.agreements == []


def test_a_shadow_arm_that_is_not_available_is_skipped(board):
    observer = RecordingObserver()
    board.available[SEARCH] = {1}
    routed = rollouts(board, 'traffic = { stable = 100 }\nshadow = "canary"', observer=observer)
    routing = routed.route("addr:1")
    routing.shadow("search", served_by, routing.call("search", served_by))
    routing.start_shadows()
    assert observer.shadows == [("search", "stable", "canary", "skipped")]


# -- agreement measures --------------------------------------------------------------------------------


def test_box_iou():
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 1, 1), (0, 0.5, 1, 1.5)) == pytest.approx(1 / 3)
    assert box_iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0


def test_each_stage_has_its_measure():
    face = Face((0.1, 0.1, 0.5, 0.5), 0.9)
    assert set(MEASURES) == {"detect", "encode", "search", "translate"}
    assert detect_agreement(([face], 1), ([face], 2)) == 1.0
    assert detect_agreement(([face], 1), ([], 2)) == 0.0
    assert detect_agreement(([], 1), ([], 2)) == 1.0
    assert encode_agreement(np.zeros((1, 4)), np.full((1, 4), 0.5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="latents of shapes"):
        encode_agreement(np.zeros((1, 4)), np.zeros((1, 8)))
    assert search_agreement(_matches("a", "b"), _matches("b", "a")) == 1.0
    assert search_agreement(_matches("a", "b"), _matches("c", "a")) == 0.5
    image = np.zeros((8, 8, 3), np.uint8)
    assert translate_agreement(image, image + 10) == 10.0
    assert translate_agreement(image, np.full((16, 16, 3), 255, np.uint8)) == 255.0  # resized to the answer's size


def test_measures_of_several_faces_are_averaged_over_the_faces():
    """A request about every face sends the shadow every face in one call: its measure is the faces' mean."""
    latents = np.zeros((2, 4))
    assert encode_agreement(latents, np.stack([np.full(4, 0.5), np.full(4, 1.5)])) == pytest.approx(2.0)
    two_faces = ([_matches("a", "b")[0], _matches("c", "d")[0]], 1)
    assert search_agreement(two_faces, ([_matches("a", "b")[0], _matches("x", "c")[0]], 1)) == 0.75
    with pytest.raises(ValueError, match="matches for 2 and 1 faces"):
        search_agreement(two_faces, ([_matches("a", "b")[0]], 1))
    image = np.zeros((8, 8, 3), np.uint8)
    assert translate_agreement([image, image], [image + 10, image + 30]) == 20.0
    with pytest.raises(ValueError, match="different numbers of faces"):
        translate_agreement([image, image], [image])


# -- the pipeline file's keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "traffic = { stable = 90, canary = 5 }",
            "[search.traffic]: the weights (stable = 90, canary = 5) add up to 95, not 100: change them so that "
            "they add up to 100",
        ),
        ('traffic = { stable = 90, canary = "ten" }', "[search.traffic]: canary: input should be a valid integer"),
        ("traffic = { stable = 110, canary = -10 }", "[search.traffic]: stable: input should be less than or equal"),
        ("traffic = { stable = true }", "[search.traffic]: stable: input should be a valid integer, got True"),
        ('traffic = { "a b" = 100 }', "[search.traffic]: 'a b' is neither a version label (1-64 of the characters"),
        ("traffic = {}", "[search.traffic]: has no arm: name at least one"),
        ('traffic = { 1 = 50, "01" = 50 }', "[search.traffic]: '1' and '01' are the same version: keep one of them"),
        ('shadow = "a b"', "[search.shadow]: 'a b' is neither a version label"),
        (
            'traffic = { stable = 100, canary = 0 }\nshadow = "stable"',
            "[search]: shadow = 'stable' is the arm that serves every request, so it would be compared with itself",
        ),
    ],
)
def test_every_rollout_problem_names_the_file_the_key_and_the_fix(text, message):
    with pytest.raises(PipelineConfigError) as refused:
        parse_pipeline_config(f"[search]\n{text}\n", source="/srv/pipeline.toml")
    assert str(refused.value).startswith("/srv/pipeline.toml: ")
    assert message in str(refused.value)


def test_versions_and_labels_as_arms():
    config = parse_pipeline_config('[encode]\ntraffic = { 1 = 90, 2 = 10 }\nshadow = 3\n[search]\nshadow = "canary"\n')
    assert config.encode.traffic == {"1": 90, "2": 10} and config.encode.shadow == "3"
    assert config.search.traffic is None and config.search.shadow == "canary"
    routed = Rollouts(config, StatusBoard({}))
    assert routed.stages["encode"].shadow.pin == Pin(version=3)
    assert routed.stages["search"].stable.name == DEFAULT_ARM  # a shadow alone: the answer is the latest version's


# -- the pipeline file read again --------------------------------------------------------------------------


def _write(path: Path, text: str, *, mtime: float | None = None) -> None:
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_a_changed_pipeline_file_is_read_again_and_a_bad_one_refused(tmp_path, caplog):
    path = tmp_path / "pipeline.toml"
    _write(path, "[search]\ntraffic = { stable = 90, canary = 10 }\n")
    watched = PipelineFile(path, required=False)
    assert watched.look() is None  # unchanged
    _write(path, "[search]\ntraffic = { stable = 50, canary = 50 }\n")
    changed = watched.look()
    assert changed is not None and changed.search.traffic == {"stable": 50, "canary": 50}
    watched.accept(changed)
    with caplog.at_level(logging.ERROR, logger="app.web.extensions"):
        _write(path, "[search]\ntraffic = { stable = 50, canary = 40 }\n")
        assert watched.look() is None
        assert watched.look() is None
    assert watched.config.search.traffic == {"stable": 50, "canary": 50}  # the last good one serves on
    assert watched.refused.startswith(f"{path}: [search.traffic]: the weights (stable = 50, canary = 40) add up")
    assert watched.refused.endswith("the pipeline file read before it stays in force")
    assert len([r for r in caplog.records if "pipeline file refused" in r.getMessage()]) == 1  # said once
    path.unlink()
    assert watched.look() is None
    assert "is gone or cannot be read" in watched.refused
    _write(path, "[search]\ntraffic = { stable = 100 }\n")
    assert watched.look().search.traffic == {"stable": 100}


def test_a_rewrite_within_the_same_mtime_tick_is_not_missed(tmp_path):
    path = tmp_path / "pipeline.toml"
    _write(path, "[search]\ntraffic = { stable = 90, canary = 10 }\n", mtime=time.time())
    watched = PipelineFile(path, required=False)
    stamp = path.stat().st_mtime_ns
    # Same size, same mtime, same inode: only the content tells them apart.
    _write(path, "[search]\ntraffic = { stable = 80, canary = 20 }\n")
    os.utime(path, ns=(stamp, stamp))
    assert watched.look().search.traffic == {"stable": 80, "canary": 20}


def test_no_file_keeps_the_defaults_until_one_appears(tmp_path):
    path = tmp_path / "pipeline.toml"
    watched = PipelineFile(path, required=False)
    assert watched.look() is None and watched.refused is None
    _write(path, '[search]\nshadow = "canary"\n')
    assert watched.look().search.shadow == "canary"
