"""Canary rollouts through the gateway, on the embedded runtime and via gRPC to the TF Serving protocol double.

The demo servables, with more versions: face_detection 2 (the translator: a detector that does not fit,
i.e. a canary that fails) and 3 (a copy of 1), latent_search_model 2 (another gallery, no face in common
with 1) and 3 (a copy of 1, removed by the last test). Labels: stable -> 1, broken -> 2, canary -> 3 for
the detector, stable -> 1, canary -> 2 for the gallery.
Each test writes the pipeline file of the running gateway, which reads it again without a restart.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest
from flask import Flask
from skimage import data

from app.web.extensions import serving
from tests.support.gateway import demo_serving_dir
from tests.support.rollouts import (
    ASTRONAUT,
    POLL,
    SMALL_PHOTO,
    address,
    gateway,
    jpeg,
    metric,
    model_config_text,
    post,
    refusal,
    timing_arms,
    use_pipeline,
    with_rollout,
)
from tests.support.waiting import wait_for


def test_a_client_keeps_its_arm_and_a_pin_wins(canary_app):
    use_pipeline(canary_app, with_rollout(search="traffic = { stable = 50, canary = 50 }"))
    gallery = {"stable": 1, "canary": 2}
    seen = {}
    for n in range(8):
        answers = [post(canary_app, "/api/v1/search", n, k="3").json for _ in range(2)]
        assert len({answer["arms"]["search"] for answer in answers}) == 1
        arm = answers[0]["arms"]["search"]
        assert {answer["gallery_version"] for answer in answers} == {gallery[arm]}
        seen[n] = arm
    assert set(seen.values()) == {"stable", "canary"}
    on_stable = next(n for n, arm in seen.items() if arm == "stable")
    pinned = post(canary_app, "/api/v1/search", on_stable, k="3", search_version="2").json
    assert pinned["arms"]["search"] == "pinned" and pinned["gallery_version"] == 2
    on_canary = next(n for n, arm in seen.items() if arm == "canary")
    pinned = post(canary_app, "/api/v1/search", on_canary, k="3", search_label="stable").json
    assert pinned["arms"]["search"] == "pinned" and pinned["gallery_version"] == 1
    # The page says it too, discreetly; a stage with no rollout is not mentioned.
    page = canary_app.test_client().post(
        "/detect_face/image", data={"image_file": (io.BytesIO(ASTRONAUT), "face.jpg")}, **address(on_canary)
    )
    assert b'<span data-arm="search">search: canary</span>' in page.data
    assert b'data-arm="detect"' not in page.data
    assert timing_arms(page.headers["Server-Timing"])["search"] == "canary"


def _answer(app: Flask, n: int) -> dict:
    body = post(app, "/api/v1/search", n, k="5", images="1").json
    body.pop("timings_ms")
    return body


def test_a_shadow_never_changes_an_answer_and_its_agreement_is_measured(canary_app):
    use_pipeline(canary_app, with_rollout(detect="traffic = { stable = 100 }", search="traffic = { stable = 100 }"))
    without = [_answer(canary_app, n) for n in range(3)]
    compared = {
        stage: metric(canary_app, "gateway_shadow_requests_total", stage=stage, outcome="compared")
        for stage in ("detect", "search")
    }
    agreement = {
        stage: metric(canary_app, "gateway_shadow_agreement_sum", stage=stage, shadow="canary")
        for stage in ("detect", "search")
    }
    use_pipeline(
        canary_app,
        with_rollout(
            detect='traffic = { stable = 100 }\nshadow = "canary"',
            search='traffic = { stable = 100 }\nshadow = "canary"',
        ),
    )
    with_shadow = [_answer(canary_app, n) for n in range(3)]
    assert with_shadow == without
    assert {body["arms"]["search"] for body in with_shadow} == {"stable"}
    assert all(match["filename"].startswith("samples/") for body in with_shadow for match in body["matches"])
    for stage in ("detect", "search"):
        wait_for(
            lambda stage=stage: metric(
                canary_app, "gateway_shadow_requests_total", stage=stage, outcome="compared"
            ) == compared[stage] + 3,
            10,
            f"three {stage} shadows compared",
        )  # fmt: skip
    # The detector's copy finds the same box (IoU 1 each time); the other gallery shares no face (overlap 0).
    detect_sum = metric(canary_app, "gateway_shadow_agreement_sum", stage="detect", shadow="canary")
    search_sum = metric(canary_app, "gateway_shadow_agreement_sum", stage="search", shadow="canary")
    assert detect_sum - agreement["detect"] == pytest.approx(3.0)
    assert search_sum - agreement["search"] == 0.0
    assert metric(canary_app, "gateway_shadow_agreement_count", stage="search", measure="topk_overlap") >= 3
    # A photo with no face is answered 422; the detector's copy still goes, and agrees (no face either).
    response = canary_app.test_client().post(
        "/api/v1/search", data=jpeg(data.coffee()), content_type="image/jpeg", **address(1)
    )
    assert response.status_code == 422
    wait_for(
        lambda: (
            metric(canary_app, "gateway_shadow_requests_total", stage="detect", outcome="compared")
            == compared["detect"] + 4
        ),
        10,
        "the copy of a request without a face compared",
    )
    detect_sum = metric(canary_app, "gateway_shadow_agreement_sum", stage="detect", shadow="canary")
    assert detect_sum - agreement["detect"] == pytest.approx(4.0)


def test_a_failing_canary_is_answered_by_the_stable_arm_and_counted(canary_app):
    use_pipeline(canary_app, with_rollout(detect="traffic = { stable = 50, broken = 50 }"))
    errors = metric(canary_app, "gateway_stage_errors_total", stage="detect", arm="broken", code="pipeline_misfit")
    fallbacks = metric(canary_app, "gateway_stage_fallbacks_total", stage="detect", arm="broken", to="stable")
    answers = [post(canary_app, "/api/v1/detect", n, SMALL_PHOTO).json for n in range(40)]
    assert {answer["arms"]["detect"] for answer in answers} == {"stable"}
    failed = metric(canary_app, "gateway_stage_errors_total", stage="detect", arm="broken", code="pipeline_misfit")
    assert failed - errors >= 10  # about half the clients were sent to the broken arm first
    assert (
        metric(canary_app, "gateway_stage_fallbacks_total", stage="detect", arm="broken", to="stable") - fallbacks
        == failed - errors
    )


def test_an_arm_that_is_not_available_is_skipped_logged_once_and_shown(canary_app, caplog):
    with caplog.at_level(logging.WARNING, logger="app.rollout"):
        use_pipeline(canary_app, with_rollout(detect="traffic = { stable = 50, ghost = 50 }"))
        answers = [post(canary_app, "/api/v1/detect", n, SMALL_PHOTO).json for n in range(30)]
    assert {answer["arms"]["detect"] for answer in answers} == {"stable"}
    said = [record.getMessage() for record in caplog.records if "'ghost'" in record.getMessage()]
    assert said == ["rollout: arm 'ghost' (label 'ghost' of face_detection) is skipped: face_detection has no "
                    "version label 'ghost'"]  # fmt: skip
    rollout = canary_app.test_client().get("/api/v1/models").json["rollouts"]["detect"]
    assert rollout["stable"] == "stable"
    assert rollout["arms"] == [
        {"name": "stable", "weight": 50, "label": "stable", "available": True, "serves_version": 1},
        {
            "name": "ghost",
            "weight": 50,
            "label": "ghost",
            "available": False,
            "reason": "face_detection has no version label 'ghost'",
        },
    ]


def test_weights_change_without_a_restart_and_a_bad_file_keeps_the_last_good_one(canary_app, caplog):
    use_pipeline(canary_app, with_rollout(search="traffic = { stable = 100 }"))
    assert {post(canary_app, "/api/v1/search", n, k="3").json["arms"]["search"] for n in range(4)} == {"stable"}
    use_pipeline(canary_app, with_rollout(search="traffic = { stable = 0, canary = 100 }"))
    assert {post(canary_app, "/api/v1/search", n, k="3").json["arms"]["search"] for n in range(4)} == {"canary"}
    path = serving(canary_app).pipeline_file.path
    with caplog.at_level(logging.ERROR, logger="app.web.extensions"):
        path.write_text(with_rollout(search="traffic = { stable = 10, canary = 95 }"), encoding="utf-8")
        wait_for(lambda: refusal(canary_app) is not None, 10, "the bad file refused")
        refused = canary_app.test_client().get("/api/v1/models").json["pipeline"]["refused"]
        assert refused.startswith(f"{path}: [search.traffic]: the weights (stable = 10, canary = 95) add up to 105")
        assert {post(canary_app, "/api/v1/search", n, k="3").json["arms"]["search"] for n in range(4)} == {"canary"}
        # Valid, but the servables do not fit it: refused too, by the checks the gateway makes at start.
        rewired = with_rollout().replace('servable = "latent_search_model"', 'servable = "face_detection"')
        path.write_text(rewired, encoding="utf-8")
        wait_for(lambda: "do not fit" in (refusal(canary_app) or ""), 10, "the misfit refused")
    assert post(canary_app, "/api/v1/search", 1, k="3").json["arms"]["search"] == "canary"
    assert len([record for record in caplog.records if "pipeline file refused" in record.getMessage()]) == 2
    use_pipeline(canary_app, with_rollout(search="traffic = { stable = 100 }"))
    assert "refused" not in canary_app.test_client().get("/api/v1/models").json["pipeline"]


def test_a_version_removed_mid_run_under_8_clients_fails_no_request(canary_app):
    """Last in the module: it takes latent_search_model version 3 away."""
    use_pipeline(canary_app, with_rollout(search="traffic = { 1 = 50, 3 = 50 }"))
    models = Path(serving(canary_app).settings.model_config_file).parent / "serving_models" / "latent_search_model"
    seen: list[tuple[float, str, int]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(n: int) -> None:
        test_client = canary_app.test_client()
        while not stop.is_set():
            sent_at = time.monotonic()  # when it was sent: one sent before the unload may be answered after it
            response = test_client.post(
                "/api/v1/search", query_string={"k": "3"}, data=ASTRONAUT, content_type="image/jpeg", **address(n)
            )
            if response.status_code != 200:
                failures.append(response.get_data(as_text=True)[:300])
            else:
                seen.append((sent_at, response.json["arms"]["search"], response.json["gallery_version"]))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: {arm for _, arm, _ in seen} == {"1", "3"}, 60, "both arms serving")
        (models / "3").rename(models / ".3.removed")  # as `rm -r` would, but whole at once
        removed_at = time.monotonic()
        wait_for(lambda: 3 not in _available(canary_app), 30, "version 3 unloaded")
        unloaded_at = time.monotonic()
        wait_for(lambda: sum(t > unloaded_at for t, _, _ in seen) >= 16, 60, "requests after the unload")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    print(f"{len(seen)} requests by 8 clients, {len(failures)} failed; version 3 unloaded "
          f"{unloaded_at - removed_at:.2f} s after its folder went")  # fmt: skip
    assert failures == []
    after = [(arm, version) for t, arm, version in seen if t > unloaded_at + POLL]
    assert after and set(after) == {("1", 1)}
    rollout = canary_app.test_client().get("/api/v1/models").json["rollouts"]["search"]
    assert rollout["arms"][1]["available"] is False and "3" in rollout["arms"][1]["reason"]


def _available(app: Flask) -> set[int]:
    statuses = serving(app).backend.model_status("latent_search_model")
    return {status.version for status in statuses if status.state == "AVAILABLE"}


def test_a_client_presenting_an_api_key_keeps_its_arm_from_any_address(tmp_path, demo_root):
    """With API keys, the key is the client: its arm follows it from address to address."""
    config = demo_serving_dir(tmp_path, demo_root)
    labels = 'version_labels { key: "stable" value: 1 }\nversion_labels { key: "canary" value: 1 }'
    config.write_text(model_config_text({"latent_search_model": labels}), encoding="utf-8")
    (tmp_path / "pipeline.toml").write_text(
        with_rollout(search="traffic = { stable = 50, canary = 50 }"), encoding="utf-8"
    )
    keys = [f"rollout-test-key-{n:02d}-0123456789abcdef" for n in range(8)]
    with gateway("local", config, api_keys=tuple(keys)) as app:
        arms = {}
        for key in keys:
            seen = set()
            for n in range(3):
                response = app.test_client().post(
                    "/api/v1/search", query_string={"k": "3"}, data=ASTRONAUT, content_type="image/jpeg",
                    headers={"X-API-Key": key}, **address(100 + n),
                )  # fmt: skip
                assert response.status_code == 200, response.get_data(as_text=True)[:300]
                seen.add(response.json["arms"]["search"])
            assert len(seen) == 1, (key, seen)
            arms[key] = seen.pop()
        assert set(arms.values()) == {"stable", "canary"}
