"""The tests' one wait: it returns as soon as the thing has happened, and otherwise says what it saw."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from tests.support.waiting import wait_for


def test_returns_the_first_value_that_holds_without_waiting_out_the_timeout() -> None:
    counter = itertools.count()
    started = time.monotonic()
    assert wait_for(lambda: next(counter), 30, "a count", until=lambda n: n >= 3, every=0.001) == 3
    assert time.monotonic() - started < 5


def test_by_default_waits_for_a_truthy_value() -> None:
    found: list[str] = []
    threading.Timer(0.05, found.append, ["it"]).start()
    assert wait_for(lambda: list(found), 10, "something found") == ["it"]


def test_a_timeout_names_what_was_waited_for_and_the_last_value_seen() -> None:
    with pytest.raises(AssertionError, match=r"^version 3 served: not within 0\.05 s; last seen: \[2, 2\]$"):
        wait_for(lambda: [2, 2], 0.05, "version 3 served", until=lambda versions: 3 in versions)


def test_a_long_last_value_shows_its_start_and_its_end() -> None:
    log = "started\n" + "x" * 5000 + "\nthe line that matters"
    with pytest.raises(AssertionError) as caught:
        wait_for(lambda: log, 0.01, "a line", until=lambda text: "never" in text)
    message = str(caught.value)
    assert "'started" in message and "the line that matters'" in message
    assert len(message) < 1200


def test_an_error_in_the_probe_is_not_waited_out() -> None:
    def probe() -> bool:
        raise KeyError("gone")

    started = time.monotonic()
    with pytest.raises(KeyError):
        wait_for(probe, 30, "never")
    assert time.monotonic() - started < 5
