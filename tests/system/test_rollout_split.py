"""A canary split through the gateway under 400 clients, on the embedded runtime and via gRPC to the protocol double:
every answer names its arm, the metrics count each, and the split holds its weights.

A timed run of hundreds of requests, so it lives in the system tier; the rollout's behaviour request by request is
tests/contract/test_rollout_gateway.py's.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.support.rollouts import (
    SMALL_PHOTO,
    metric,
    post,
    timing_arms,
    use_pipeline,
    with_rollout,
)

pytestmark = [pytest.mark.slow, pytest.mark.long(minutes=1.5)]


# The split itself is proven over 2,000 clients by tests/unit/test_rollout.py (within 3 % of the weights); here it is
# the gateway's: each client's address is its identity, every answer names its arm and the metrics count it. These
# 400 fixed addresses put 33 clients (8.25 %) on the canary arm under 90/10 (a keyed hash: the same every run);
# 4 % is 2.7 standard deviations of a 400-client draw, so a new salt or hash would rarely stray past it either.
CLIENTS_OF_THE_SPLIT = 400


def test_weights_hold_over_400_clients_and_every_answer_names_its_arm(canary_app):
    use_pipeline(canary_app, with_rollout(detect="traffic = { stable = 90, canary = 10 }"))
    before = {arm: metric(canary_app, "gateway_stage_requests_total", stage="detect", arm=arm) for arm in ("stable",
              "canary")}  # fmt: skip
    arms = Counter()
    for n in range(CLIENTS_OF_THE_SPLIT):
        response = post(canary_app, "/api/v1/detect", n, SMALL_PHOTO)
        arm = response.json["arms"]["detect"]
        assert timing_arms(response.headers["Server-Timing"]) == {"detect": arm}
        arms[arm] += 1
    print(f"split over {CLIENTS_OF_THE_SPLIT} clients: {dict(arms)}")
    assert set(arms) == {"stable", "canary"}
    assert abs(arms["canary"] / CLIENTS_OF_THE_SPLIT - 0.10) <= 0.04
    for arm in ("stable", "canary"):
        counted = metric(canary_app, "gateway_stage_requests_total", stage="detect", arm=arm) - before[arm]
        assert counted == arms[arm]
