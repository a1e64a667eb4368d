"""Waiting in tests: one poll with a deadline, for "until X has happened", instead of a fixed sleep.

A fixed sleep is either too short on a loaded machine (the test flakes) or too long everywhere
(the suite crawls). ``wait_for`` returns as soon as the thing has happened and, when it never
does, fails with what was waited for and the last value it saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SHOWN = 1000  # characters of the last value an error shows: its start and its end (a log's newest lines)


def wait_for(
    probe: Callable[[], T],
    timeout: float,
    what: str,
    *,
    until: Callable[[T], object] = bool,
    every: float = 0.02,
) -> T:
    """Call ``probe()`` every ``every`` seconds until ``until(value)`` holds (by default: the value is truthy);
    return that value.

    Past ``timeout`` seconds, raises AssertionError naming ``what`` and the last value seen. An exception
    from ``probe`` is not caught: it is the test's failure, not a reason to keep waiting.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s; last seen: {_shown(value)}")
        time.sleep(every)


def _shown(value: object) -> str:
    text = repr(value)
    if len(text) <= SHOWN:
        return text
    half = SHOWN // 2
    return f"{text[:half]} ...[{len(text) - SHOWN} characters]... {text[-half:]}"
