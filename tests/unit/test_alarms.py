"""Alarms on one watcher thread: each call comes at its time, in order, unless cancelled first."""

from __future__ import annotations

import threading
import time

from app.web.alarms import Alarms


def test_calls_come_in_order_of_their_time_and_cancelled_ones_never():
    alarms = Alarms("test-alarms")
    called: list[str] = []
    last = threading.Event()
    started = time.monotonic()
    alarms.after(0.30, lambda: (called.append("late"), last.set()))
    cancelled = alarms.after(0.05, lambda: called.append("cancelled"))
    alarms.after(0.10, lambda: called.append("early"))  # sooner than the one the watcher first waited for
    cancelled.cancel()
    assert last.wait(5)
    assert called == ["early", "late"]
    assert time.monotonic() - started >= 0.30
    watchers = [t for t in threading.enumerate() if t.name == "test-alarms"]
    assert len(watchers) == 1 and watchers[0].daemon


def test_a_failing_call_does_not_stop_the_others():
    alarms = Alarms("test-alarms-failing")
    done = threading.Event()
    alarms.after(0.01, lambda: 1 / 0)
    alarms.after(0.05, done.set)
    assert done.wait(5)
