"""The model server with fault knobs: how the tests stop, slow down and fail a TF Serving replica on purpose.

:class:`TFServingDouble` is the product's :class:`app.model_server.ModelServer` (the same servicers,
the same runtime) with a server interceptor in front of every call:

- ``delay`` seconds before each answer (``delays[name]`` before each call naming one servable only);
- ``fail_with`` a status code for every call, ``fail_next(n, code)`` for the next n calls only,
  ``fail_servables[name]`` a status code for every Predict of one servable (a shard that is down);
- ``cancel_next(n)``: the next n calls are cancelled by the server while in flight (``context.cancel()``), as a
  replica that shuts down mid-call does;
- ``calls`` counts what arrived, by method name (``servables``: each Predict, by the servable it names), and
  ``wait_for_calls(method, n)`` waits until n have;
- ``stop()``, ``start()`` again on the same port, ``restart()``, and ``reset()`` to a healthy server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc

from app.model_server import ModelServer

__all__ = ["FaultInjector", "TFServingDouble"]


class FaultInjector(grpc.ServerInterceptor):
    """Counts, delays and fails calls before the servicer sees them, as a sick or slow server would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay = 0.0
        self.delays: dict[str, float] = {}
        self.fail_with: grpc.StatusCode | None = None
        self.fail_servables: dict[str, grpc.StatusCode] = {}
        self.queued: list[grpc.StatusCode] = []
        self.cancels = 0
        self.calls: Counter[str] = Counter()
        self.servables: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        answer = handler.unary_unary

        def faulty(request: Any, context: grpc.ServicerContext) -> Any:
            servable = request.model_spec.name if method == "Predict" else ""
            if self.enter(method, context, servable):
                context.cancel()  # the client sees CANCELLED, as from a replica that stopped mid-call
                return None
            return answer(request, context)

        return grpc.unary_unary_rpc_method_handler(
            faulty, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def enter(self, method: str, context: grpc.ServicerContext, servable: str) -> bool:
        """Count the call, delay it, fail it; True when it is to be cancelled instead of answered."""
        with self.lock:
            self.calls[method] += 1
            if servable:
                self.servables[servable] += 1
            self.arrived.notify_all()
            injected = self.queued.pop(0) if self.queued else self.fail_servables.get(servable, self.fail_with)
            delay = self.delays.get(servable, self.delay)
            cancel = self.cancels > 0
            self.cancels -= cancel
        if delay:
            time.sleep(delay)
        if injected is not None:
            context.abort(injected, f"{self.name}: injected {injected.name}")
        return cancel


class TFServingDouble(ModelServer):
    """One TF Serving replica on 127.0.0.1:<port> whose calls the test can delay, fail and count."""

    def __init__(self, *args: Any, name: str = "serving", **options: Any) -> None:
        self.faults = FaultInjector(name)
        super().__init__(*args, name=name, interceptors=[self.faults], **options)

    # The knobs read and write the injector, so a test says ``double.delay = 0.5``.
    @property
    def delay(self) -> float:
        return self.faults.delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        self.faults.delay = seconds

    @property
    def delays(self) -> dict[str, float]:
        return self.faults.delays

    @property
    def fail_with(self) -> grpc.StatusCode | None:
        return self.faults.fail_with

    @fail_with.setter
    def fail_with(self, code: grpc.StatusCode | None) -> None:
        self.faults.fail_with = code

    @property
    def fail_servables(self) -> dict[str, grpc.StatusCode]:
        return self.faults.fail_servables

    @property
    def calls(self) -> Counter[str]:
        return self.faults.calls

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        with self.faults.lock:
            self.faults.queued.extend([code] * count)

    def cancel_next(self, count: int) -> None:
        with self.faults.lock:
            self.faults.cancels += count

    def wait_for_calls(self, method: str, count: int, timeout: float = 10.0) -> None:
        """Block until ``count`` calls of ``method`` have arrived (AssertionError past ``timeout`` seconds)."""
        with self.faults.arrived:
            arrived = self.faults.arrived.wait_for(lambda: self.faults.calls[method] >= count, timeout)
        assert arrived, f"{self.name}: {self.faults.calls[method]} of {count} {method} calls arrived in {timeout:g}s"

    def reset(self) -> None:
        """Back to a healthy, prompt, running server."""
        with self.faults.lock:
            self.faults.delay, self.faults.fail_with = 0.0, None
            self.faults.delays.clear()
            self.faults.fail_servables.clear()
            self.faults.queued.clear()
            self.faults.cancels = 0
        self.start()
