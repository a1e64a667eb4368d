"""Alarms for every request of a worker on one thread: a call at a given time unless it is cancelled first.

``threading.Timer`` would start (and end) a thread per request, a quarter of a millisecond of CPU each
on the benchmark's machine (bench/gateway.py), to guard against clients that rarely come. :class:`Alarms`
keeps the pending calls in a heap, watched by one daemon thread started on first use (in each gunicorn
worker, after the fork), and cancelling one only marks it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Alarm", "Alarms"]

log = logging.getLogger(__name__)


@dataclass(order=True)
class Alarm:
    """One pending call; ``cancel()`` keeps it from happening (a no-op once it has)."""

    due: float
    number: int
    call: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Alarms:
    """Calls ``call`` ``seconds`` from now on the watcher thread, unless cancelled; thread-safe."""

    def __init__(self, name: str = "alarms") -> None:
        self.name = name
        self._pending: list[Alarm] = []
        self._numbers = itertools.count()
        self._changed = threading.Condition()
        self._watcher: threading.Thread | None = None

    def after(self, seconds: float, call: Callable[[], None]) -> Alarm:
        alarm = Alarm(time.monotonic() + seconds, next(self._numbers), call)
        with self._changed:
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name=self.name, daemon=True)
                self._watcher.start()
            heapq.heappush(self._pending, alarm)
            if self._pending[0] is alarm:  # sooner than what the watcher waits for
                self._changed.notify()
        return alarm

    def _watch(self) -> None:
        while True:
            with self._changed:
                while self._pending and self._pending[0].cancelled:
                    heapq.heappop(self._pending)
                if not self._pending:
                    self._changed.wait()
                    continue
                wait = self._pending[0].due - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                alarm = heapq.heappop(self._pending)
            if alarm.cancelled:  # cancelled after it was taken off the heap
                continue
            try:
                alarm.call()
            except Exception:  # one failing call must not stop the alarms of every other request
                log.exception("%s: an alarm's call failed", self.name)
