"""The runtime's small TF Serving rules, one by one, against TF Serving's own unit tests.

availability_preserving_policy_test.cc case for case (which action the manager takes next),
the version names TF Serving's storage-path source reads (absl::SimpleAtoi; the leading-zeros and
timestamped-version tests), and the cut of long status messages (grpc_status_util.cc).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Settings
from app.errors import wire_message
from app.serving.layout import parse_version
from app.serving.runtime import ModelRuntime, _Harness, _Model

# (version, state, aspired) as the C++ tests list them; the expected action, or None.
POLICY_CASES = {
    "LoadsNewAspired": (
        [(1, "unloading", False), (2, "error", False), (3, "ready", True), (4, "new", True), (5, "new", True)],
        ("load", 5),
    ),
    "UnloadsNonAspiredFirst": (
        [(1, "unloading", False), (2, "error", False), (3, "ready", False), (4, "ready", True), (5, "new", True)],
        ("unload", 3),
    ),
    "UnloadsFirstNonAspiredWhenNoAspired": (
        [(1, "disabled", False), (2, "ready", False), (3, "error", False)],
        ("unload", 2),
    ),
    "ReturnsNoActionWhenNone": (
        [(1, "ready", True), (2, "error", True), (3, "loading", True), (4, "unloading", False), (5, "disabled", False)],
        None,
    ),
    "DoesNotUnloadWhenOtherNotReady": ([(1, "ready", False), (2, "loading", True)], None),
    "DoesNotUnloadWhenOtherInError": ([(1, "ready", False), (2, "error", True)], None),
    "UnloadIfOtherReadyEvenIfLoading": ([(1, "ready", False), (2, "loading", True), (3, "ready", True)], ("unload", 1)),
    "UnloadIfOtherReadyEvenIfError": ([(1, "ready", False), (2, "error", True), (3, "ready", True)], ("unload", 1)),
    "UnloadIfNoAspiredVersionsReady": (
        [(2, "ready", False), (1, "ready", False), (3, "error", True), (4, "loading", True)],
        ("unload", 1),
    ),
}


@pytest.mark.parametrize("case", list(POLICY_CASES), ids=list(POLICY_CASES))
def test_availability_preserving_policy(case):
    versions, expected = POLICY_CASES[case]
    model = _Model(config=None)  # type: ignore[arg-type]  # the policy reads the versions only
    for version, state, aspired in versions:
        model.harnesses[version] = _Harness(version, Path(str(version)), aspired=aspired, state=state)
    action = ModelRuntime._next_action(model)
    assert (None if action is None else (action[0], action[1].version)) == expected


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("1", 1),
        ("00000123", 123),  # SpecificVersionsLeadingZeros
        ("1502836592", 1502836592),  # ParseTimestampedVersion
        ("9223372036854775807", 2**63 - 1),
        ("+7", 7),
        (" 7 ", 7),
        ("-1", -1),
        ("9223372036854775808", None),  # past int64
        ("1.5", None),
        ("v1", None),
        ("1a", None),
        ("", None),
        (".1.tmp", None),
    ],
)
def test_version_names_read_as_tf_serving_reads_them(name, version):
    assert parse_version(name) == version


def test_status_messages_are_cut_at_1024_bytes_as_tf_serving_cuts_them():
    assert wire_message("x" * 1024) == "x" * 1024
    assert wire_message("x" * 1025) == "x" * 1024 + "...TRUNCATED"
    # Cut by bytes: a character that does not fit whole is left out, not split.
    assert wire_message("x" * 1023 + "é" + "y") == "x" * 1023 + "...TRUNCATED"


def test_the_gateway_settings_mirror_tf_serving_flags():
    defaults = Settings.load(environ={})
    assert (defaults.max_load_retries, defaults.load_retry_interval) == (5, 60.0)  # TF Serving's defaults
    assert defaults.allow_labels_for_unavailable is True  # as docker-compose runs TF Serving
    read = Settings.load(
        environ={
            "GATEWAY_MAX_LOAD_RETRIES": "0",
            "GATEWAY_LOAD_RETRY_INTERVAL": "0.5",
            "GATEWAY_ALLOW_LABELS_FOR_UNAVAILABLE": "off",
        }
    )
    assert (read.max_load_retries, read.load_retry_interval, read.allow_labels_for_unavailable) == (0, 0.5, False)
    for name in ("GATEWAY_MAX_LOAD_RETRIES", "GATEWAY_LOAD_RETRY_INTERVAL"):
        with pytest.raises(ValueError, match=f"{name} must not be negative"):
            Settings.load(environ={name: "-1"})
