"""Canary rollouts per stage: which arm serves a client, arms skipped while unavailable, fallbacks, shadow copies.

A stage of the pipeline file may split its requests between *arms*, each a version label
or a version number of the stage's servable (``traffic = { stable = 90, canary = 10 }``),
and may name a *shadow* arm that gets a copy of each request once the answer is ready
(``shadow = "canary"``): its result is compared with the answer and never returned.

- **Sticky**: a client (its API key, else its address: ``app.web.security.client_identity``)
  lands on one arm for the life of a rollout. Its place is a hash of its identity salted
  with the rollout (the stage, the servable and the arms' names), laid over the arms'
  weights in the file's order; changing only the weights moves as few clients as the
  new weights allow (growing the last arm from 10 to 50 keeps its first 10 % on it).
  Renaming or adding an arm starts a new rollout: everyone is drawn again.
- **Pins win**: a request that pins the stage (``search_label=canary``) gets that, and
  no shadow copy.
- **The first arm is the stable one.** An error from another arm is counted and the
  stage is run again on the stable arm, for that request. An arm that is not available
  (its version not loaded, its label unknown; checked every few seconds from the
  server's status, and at once when a call says so) is skipped, logged once and shown
  in ``/api/v1/models``: its clients go to the stable arm, then the other arms in the
  file's order; with none available, to the servable's own choice (its latest version).
- **Shadows** run on the backend's thread pool after the answer is ready, at most a few
  at a time (beyond that a copy is dropped and counted); each is measured against the
  answer: the best face's box IoU (detect), the latent distance (encode), the top-k
  overlap by file name (search), the mean absolute pixel difference (translate).

Nothing here imports Flask: ``app.pipeline`` routes every stage call through a
:class:`Routing`, and an observer (``app.web.metrics.RolloutMetrics``) counts what happened.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from app.errors import GatewayError, NotFound, UnknownSignature
from app.pipeline_config import TOTAL_WEIGHT, PipelineConfig, StageConfig, arm_pin
from app.serving.base import Backend

__all__ = [
    "DEFAULT_ARM",
    "MEASURES",
    "PINNED_ARM",
    "Arm",
    "ArmHealth",
    "Pin",
    "Pins",
    "RolloutObserver",
    "Rollouts",
    "Routing",
    "StageRollout",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ARM = "default"  # a stage with no split: the servable's own choice (its latest version)
PINNED_ARM = "pinned"  # the request named the version or label itself
SHADOWS_IN_FLIGHT = 4  # shadow copies running at once, per process; more are dropped (and counted)


@dataclass(frozen=True)
class Pin:
    """A version or a version label one stage's servable is pinned to for one request."""

    version: int | None = None
    label: str | None = None


Pins = Mapping[str, Pin]


@dataclass(frozen=True)
class Arm:
    """One way a stage's servable can be asked: a label or version of the split (``pin``), or its default."""

    name: str
    weight: int = 0
    pin: Pin | None = None  # None: no version asked for, the servable's latest

    @classmethod
    def named(cls, name: str, weight: int = 0) -> Arm:
        version, label = arm_pin(name)
        return cls(name, weight, Pin(version=version, label=label))

    def what(self) -> str:
        if self.pin is None:
            return "its latest version"
        return f"version {self.pin.version}" if self.pin.version is not None else f"label {self.pin.label!r}"

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "weight": self.weight}
        if self.pin is not None and self.pin.version is not None:
            body["version"] = self.pin.version
        elif self.pin is not None:
            body["label"] = self.pin.label
        return body


DEFAULT = Arm(DEFAULT_ARM)


def unavailable(exc: GatewayError) -> bool:
    """Whether an error says the arm is not there (its version is not loaded, its label is unknown).

    A missing signature is the version's own misfit, not its absence.
    """
    return isinstance(exc, NotFound) and not isinstance(exc, UnknownSignature)


class StageRollout:
    """One stage's split: its arms in the file's order (the first is the stable one), its shadow arm, its salt."""

    def __init__(self, stage: str, config: StageConfig) -> None:
        self.stage = stage
        self.servable = config.servable
        traffic = config.traffic or {}
        self.arms = tuple(Arm.named(name, weight) for name, weight in traffic.items())
        self.stable = self.arms[0] if self.arms else DEFAULT
        self.shadow: Arm | None = None
        if config.shadow is not None:
            same = [arm for arm in self.arms if arm_pin(arm.name) == arm_pin(config.shadow)]
            self.shadow = same[0] if same else Arm.named(config.shadow)
        # The rollout's identity: the same arms under new weights keep their clients; new arm names draw anew.
        identity = "\0".join([stage, self.servable, *sorted(arm.name for arm in self.arms)])
        self.salt = hashlib.sha256(identity.encode("utf-8")).digest()[:16]

    def place(self, client: str | None) -> float:
        """Where a client falls in [0, 1): a keyed hash of its identity (a random draw for no identity)."""
        if client is None:
            return random.random()
        digest = hashlib.blake2b(client.encode("utf-8", "surrogateescape"), digest_size=8, key=self.salt).digest()
        return int.from_bytes(digest, "big") / 2**64

    def assigned(self, client: str | None) -> Arm:
        """The arm a client's place falls on, the weights laid end to end in the file's order."""
        if not self.arms:
            return DEFAULT
        point = self.place(client) * TOTAL_WEIGHT
        edge = 0
        for arm in self.arms:
            edge += arm.weight
            if point < edge:
                return arm
        return [arm for arm in self.arms if arm.weight > 0][-1]

    def fallbacks(self, arm: Arm) -> list[Arm]:
        """Where a request goes when ``arm`` cannot serve it: the stable arm, the other weighted arms, the default."""
        order = [self.stable, *(other for other in self.arms[1:] if other.weight > 0), DEFAULT]
        return [other for other in order if other.name != arm.name]

    def describe(self) -> dict[str, Any]:
        return {
            "servable": self.servable,
            "arms": [arm.to_dict() for arm in self.arms],
            "stable": self.stable.name,
            "shadow": None if self.shadow is None else self.shadow.to_dict(),
        }


class RolloutObserver(Protocol):
    """What a rollout reports: each stage call per arm, fallbacks, shadow outcomes and agreement."""

    def stage_call(self, stage: str, arm: str, seconds: float | None, error: str | None) -> None: ...

    def fallback(self, stage: str, arm: str, to: str) -> None: ...

    def shadow_call(self, stage: str, arm: str, shadow: str, outcome: str) -> None: ...

    def agreement(self, stage: str, arm: str, shadow: str, measure: str, value: float) -> None: ...


class QuietObserver:
    """Reports nowhere (a pipeline built without metrics)."""

    def stage_call(self, stage: str, arm: str, seconds: float | None, error: str | None) -> None:
        pass

    def fallback(self, stage: str, arm: str, to: str) -> None:
        pass

    def shadow_call(self, stage: str, arm: str, shadow: str, outcome: str) -> None:
        pass

    def agreement(self, stage: str, arm: str, shadow: str, measure: str, value: float) -> None:
        pass


@dataclass
class ArmState:
    """What the last look found of one arm: available or not (None: cannot tell), the version, and why not."""

    available: bool | None = None
    version: int | None = None
    reason: str | None = None
    down_until: float = 0.0  # a call found it gone: skipped until then, whatever the last look said
    down_reason: str | None = None


LabelSource = Callable[[], Mapping[str, Mapping[str, int]] | None]


class ArmHealth:
    """Which arms can serve now: the server's version states and labels, looked at every ``interval`` seconds
    (in the background, by the first request after it), and any arm a call found gone, until the next look.

    A label arm whose labels cannot be read (TF Serving's API does not list them, and the
    gateway may not see its config file) counts as available until a call finds it gone.
    """

    def __init__(self, backend: Backend, arms: Mapping[str, list[Arm]], labels: LabelSource, interval: float) -> None:
        self.backend = backend
        self.arms = {servable: list({arm.name: arm for arm in found}.values()) for servable, found in arms.items()}
        self.labels = labels
        self.interval = interval
        self._states: dict[tuple[str, str], ArmState] = {
            (servable, arm.name): ArmState() for servable, found in self.arms.items() for arm in found
        }
        self._looked_at: float | None = None
        self._looking = False
        self._lock = threading.Lock()

    def available(self, servable: str, arm: Arm) -> bool:
        if arm.pin is None:
            return True
        state = self._states.get((servable, arm.name))
        if state is None:
            return True
        if state.down_until > time.monotonic():
            return False
        return state.available is not False

    def look_if_due(self) -> None:
        """The first request looks before it is routed; later ones start a look in the background when one is due."""
        if not self._states:
            return
        now = time.monotonic()
        with self._lock:
            if self._looking or (self._looked_at is not None and now - self._looked_at < self.interval):
                return
            first = self._looked_at is None
            self._looking = True
        if first:
            self._look_and_finish()
            return
        try:
            self.backend.submit(self._look_and_finish)
        except RuntimeError:  # the pool is shut down: the backend is closing
            with self._lock:
                self._looking = False

    def _look_and_finish(self) -> None:
        try:
            self.look()
        except Exception:  # a look must never fail a request; the next one tries again
            log.exception("rollout: looking at the arms failed")
        finally:
            with self._lock:
                self._looking = False
                self._looked_at = time.monotonic()

    def look(self) -> None:
        """Read every arm's state from the server now."""
        try:
            labels = self.labels()
        except Exception:  # labels that cannot be read are labels not known: the arms are tried
            log.exception("rollout: the version labels could not be read")
            labels = None
        for servable, arms in self.arms.items():
            try:
                statuses = self.backend.model_status(servable)
            except GatewayError as exc:
                for arm in arms:
                    self._set(servable, arm, None, None, f"the status of {servable} cannot be read: {exc.message}")
                continue
            serving = {status.version for status in statuses if status.state == "AVAILABLE"}
            for arm in arms:
                if arm.pin is None:
                    continue
                version = arm.pin.version
                if version is None and labels is None:
                    self._set(servable, arm, None, None, None)
                    continue
                if version is None:
                    version = labels.get(servable, {}).get(arm.pin.label)  # type: ignore[union-attr]
                    if version is None:
                        self._set(servable, arm, False, None, f"{servable} has no version label {arm.pin.label!r}")
                        continue
                if version in serving:
                    self._set(servable, arm, True, version, None)
                else:
                    self._set(servable, arm, False, version, f"version {version} of {servable} is not available")

    def _set(self, servable: str, arm: Arm, available: bool | None, version: int | None, reason: str | None) -> None:
        with self._lock:
            state = self._states[(servable, arm.name)]
            was = state.available
            state.available, state.version, state.reason = available, version, reason
        if available is False and was is not False:
            log.warning("rollout: arm %r (%s of %s) is skipped: %s", arm.name, arm.what(), servable, reason)
        elif available is True and was is False:
            log.info("rollout: arm %r (%s of %s) is available again", arm.name, arm.what(), servable)

    def found_gone(self, servable: str, arm: Arm, reason: str) -> None:
        """A call found the arm gone: skip it until the next look says otherwise (logged once)."""
        state = self._states.get((servable, arm.name))
        if state is None or arm.pin is None:
            return
        with self._lock:
            already = state.down_until > time.monotonic()
            state.down_until = time.monotonic() + max(self.interval, 0.05)
            state.down_reason = reason
            self._looked_at = min(self._looked_at or 0.0, time.monotonic() - self.interval)  # look again soon
        if not already and state.available is not False:
            log.warning("rollout: arm %r (%s of %s) is skipped: %s", arm.name, arm.what(), servable, reason)

    def state(self, servable: str, arm: Arm) -> dict[str, Any]:
        state = self._states.get((servable, arm.name), ArmState())
        body: dict[str, Any] = {"available": self.available(servable, arm)}
        if state.version is not None:
            body["serves_version"] = state.version
        if state.down_until > time.monotonic():
            body["reason"] = state.down_reason
        elif state.reason:
            body["reason"] = state.reason
        return body


class Rollouts:
    """Every stage's rollout over one backend: routes requests, keeps arm health, runs shadows."""

    def __init__(
        self,
        config: PipelineConfig,
        backend: Backend,
        *,
        observer: RolloutObserver | None = None,
        labels: LabelSource | None = None,
        check_interval: float = 2.0,
        shadows_in_flight: int = SHADOWS_IN_FLIGHT,
    ) -> None:
        self.backend = backend
        self.observer: RolloutObserver = observer or QuietObserver()
        self.stages = {
            name: StageRollout(name, stage)
            for name, stage in config.items()
            if stage.traffic is not None or stage.shadow is not None
        }
        arms: dict[str, list[Arm]] = {}
        for rollout in self.stages.values():
            extra = [rollout.shadow] if rollout.shadow is not None else []
            arms.setdefault(rollout.servable, []).extend([*rollout.arms, *extra])
        self.health = ArmHealth(backend, arms, labels or (lambda: None), check_interval)
        self._shadow_slots = threading.BoundedSemaphore(max(1, shadows_in_flight))
        self._fallbacks_said: set[tuple[str, str, str, str]] = set()

    def route(self, client: str | None, pins: Pins | None = None) -> Routing:
        """The routing of one request from ``client`` (None: drawn at random), its explicit pins winning."""
        if self.stages:
            self.health.look_if_due()
        return Routing(self, client, pins or {})

    def describe(self, *, look: bool = False) -> dict[str, Any]:
        """Each stage's rollout and the state of its arms, for /api/v1/models (``look``: ask the server first)."""
        if look and self.stages:
            self.health.look()
        body = {}
        for name, rollout in self.stages.items():
            entry = rollout.describe()
            for arm in entry["arms"]:
                arm.update(self.health.state(rollout.servable, Arm.named(arm["name"])))
            if entry["shadow"] is not None:
                entry["shadow"].update(self.health.state(rollout.servable, rollout.shadow))  # type: ignore[arg-type]
            body[name] = entry
        return body

    def note_fallback(self, stage: str, arm: str, to: str, exc: GatewayError) -> None:
        """Count a fallback; the first of each kind is logged as a warning, the others at debug level."""
        self.observer.fallback(stage, arm, to)
        key = (stage, arm, to, exc.code)
        level = logging.DEBUG if key in self._fallbacks_said else logging.WARNING
        self._fallbacks_said.add(key)
        log.log(level, "rollout: %s on arm %r failed (%s: %s); answered by %r", stage, arm, exc.code, exc.message, to)

    def _shadow(self, stage: str, arm: str, shadow: Arm, call: Callable[[Pins], Any], primary: Any) -> None:
        rollout = self.stages[stage]
        if not self.health.available(rollout.servable, shadow):
            self.observer.shadow_call(stage, arm, shadow.name, "skipped")
            return
        if not self._shadow_slots.acquire(blocking=False):
            self.observer.shadow_call(stage, arm, shadow.name, "dropped")
            return
        try:
            self.backend.submit(self._run_shadow, stage, arm, shadow, call, primary)
        except RuntimeError:  # the pool is shut down: the backend is closing
            self._shadow_slots.release()
            self.observer.shadow_call(stage, arm, shadow.name, "dropped")

    def _run_shadow(self, stage: str, arm: str, shadow: Arm, call: Callable[[Pins], Any], primary: Any) -> None:
        measure, compare = MEASURES[stage]
        try:
            value = compare(primary, call({stage: shadow.pin} if shadow.pin is not None else {}))
        except GatewayError as exc:
            if unavailable(exc):
                self.health.found_gone(self.stages[stage].servable, shadow, exc.message)
            self.observer.shadow_call(stage, arm, shadow.name, "failed")
            log.debug("rollout: shadow %s of %s failed: %s", shadow.name, stage, exc.message)
        except Incomparable as exc:
            self.observer.shadow_call(stage, arm, shadow.name, "incomparable")
            log.debug("rollout: shadow %s of %s: %s", shadow.name, stage, exc)
        except Exception:  # never let a shadow's surprise reach anyone but the log
            self.observer.shadow_call(stage, arm, shadow.name, "failed")
            log.exception("rollout: shadow %s of %s failed", shadow.name, stage)
        else:
            self.observer.shadow_call(stage, arm, shadow.name, "compared")
            self.observer.agreement(stage, arm, shadow.name, measure, value)
        finally:
            self._shadow_slots.release()


@dataclass
class _ShadowCopy:
    stage: str
    arm: str
    shadow: Arm
    call: Callable[[Pins], Any]
    primary: Any


@dataclass
class Routing:
    """One request's way through the rollouts: the arm of each stage, what served it, and its shadow copies."""

    rollouts: Rollouts
    client: str | None
    pins: Pins
    served: dict[str, str] = field(default_factory=dict)  # stage -> the arm whose answer the request got
    _arms: dict[str, Arm] = field(default_factory=dict)
    _shadows: list[_ShadowCopy] = field(default_factory=list)

    def arm(self, stage: str) -> Arm:
        """The arm a stage is on for this request: a pin, the split's choice among available arms, or the default."""
        chosen = self._arms.get(stage)
        if chosen is None:
            pin = self.pins.get(stage)
            rollout = self.rollouts.stages.get(stage)
            if pin is not None:
                chosen = Arm(PINNED_ARM, pin=pin)
            elif rollout is None or not rollout.arms:
                chosen = DEFAULT
            else:
                chosen = rollout.assigned(self.client)
                if not self.rollouts.health.available(rollout.servable, chosen):
                    chosen = self._next(rollout, chosen, set())
            self._arms[stage] = chosen
        return chosen

    def _next(self, rollout: StageRollout, arm: Arm, tried: set[str]) -> Arm:
        candidates = [other for other in rollout.fallbacks(arm) if other.name not in tried]
        for other in candidates:
            if self.rollouts.health.available(rollout.servable, other):
                return other
        return DEFAULT

    def stage_pins(self, stage: str, arm: Arm) -> dict[str, Pin]:
        pins = {name: pin for name, pin in self.pins.items() if name != stage}
        if arm.pin is not None:
            pins[stage] = arm.pin
        return pins

    def call(self, stage: str, fn: Callable[[Pins], T], *, counted: bool = True) -> T:
        """``fn(pins)`` on the stage's arm; on an error from a canary arm (or any arm found gone), again on the
        next arm. ``counted``: a call the stage's figures count (not a look at metadata before it)."""
        observer = self.rollouts.observer
        rollout = self.rollouts.stages.get(stage)
        arm = self.arm(stage)
        tried: set[str] = set()
        while True:
            started = time.perf_counter()
            try:
                value = fn(self.stage_pins(stage, arm))
            except GatewayError as exc:
                observer.stage_call(stage, arm.name, time.perf_counter() - started if counted else None, exc.code)
                if rollout is None or arm.name == PINNED_ARM or arm.name == DEFAULT_ARM:
                    raise
                gone = unavailable(exc)
                if gone:
                    self.rollouts.health.found_gone(rollout.servable, arm, exc.message)
                if arm.name == rollout.stable.name and not gone:
                    raise  # the stable arm's own answer
                tried.add(arm.name)
                following = self._next(rollout, arm, tried)
                self.rollouts.note_fallback(stage, arm.name, following.name, exc)
                self._arms[stage] = arm = following
                continue
            if counted:
                observer.stage_call(stage, arm.name, time.perf_counter() - started, None)
                self.served[stage] = arm.name
            return value

    def shadow(self, stage: str, fn: Callable[[Pins], Any], primary: Any) -> None:
        """Keep a copy of the stage's call for its shadow arm; :meth:`start_shadows` sends it."""
        rollout = self.rollouts.stages.get(stage)
        if rollout is None or rollout.shadow is None:
            return
        served = self.served.get(stage)
        if served is None or served == PINNED_ARM or served == rollout.shadow.name:
            return  # a pinned request, or one the shadow arm answered itself
        self._shadows.append(_ShadowCopy(stage, served, rollout.shadow, fn, primary))

    def start_shadows(self) -> None:
        """Send the shadow copies (on the backend's pool; the caller does not wait)."""
        copies, self._shadows = self._shadows, []
        for copy in copies:
            self.rollouts._shadow(copy.stage, copy.arm, copy.shadow, copy.call, copy.primary)


# -- agreement measures ------------------------------------------------------------------------------


class Incomparable(ValueError):
    """The shadow's answer cannot be set against the answer (e.g. latents of different sizes)."""


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two (ymin, xmin, ymax, xmax) boxes."""
    height = min(a[2], b[2]) - max(a[0], b[0])
    width = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, height) * max(0.0, width)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def detect_agreement(primary: Any, shadow: Any) -> float:
    """The IoU of the best face each found (1 when neither found one, 0 when only one did)."""
    faces, other = primary[0], shadow[0]
    if not faces or not other:
        return 1.0 if not faces and not other else 0.0
    return box_iou(faces[0].box, other[0].box)


def encode_agreement(primary: np.ndarray, shadow: np.ndarray) -> float:
    """The Euclidean distance between the two latents of each face (``[N, *latent]``), averaged over the faces."""
    if np.shape(primary) != np.shape(shadow):
        raise Incomparable(f"latents of shapes {list(np.shape(primary))} and {list(np.shape(shadow))}")
    difference = np.asarray(primary, np.float64) - np.asarray(shadow, np.float64)
    if difference.ndim < 2:
        return float(np.sqrt(np.sum(difference * difference)))
    per_face = np.sqrt(np.sum((difference * difference).reshape(len(difference), -1), axis=1))
    return float(np.mean(per_face)) if len(per_face) else 0.0


def _topk_overlap(matches: list, other: list) -> float:
    if not matches:
        return 1.0 if not other else 0.0
    found = {match.filename for match in other}
    return sum(match.filename in found for match in matches) / len(matches)


def search_agreement(primary: Any, shadow: Any) -> float:
    """The share of the answer's gallery faces (by file name) that the shadow also found; for several faces (a list
    of matches per face), averaged over the faces."""
    matches, other = primary[0], shadow[0]
    if matches and isinstance(matches[0], list):  # one list of matches per face
        if len(matches) != len(other):
            raise Incomparable(f"matches for {len(matches)} and {len(other)} faces")
        return float(np.mean([_topk_overlap(mine, theirs) for mine, theirs in zip(matches, other, strict=True)]))
    return _topk_overlap(matches, other)


def translate_agreement(primary: Any, shadow: Any) -> float:
    """The mean absolute difference per pixel and channel, 0..255 (the shadow resized to the answer's size); for
    several faces (a list of images), averaged over the faces."""
    if isinstance(primary, list):
        if not isinstance(shadow, list) or len(primary) != len(shadow):
            raise Incomparable("translations of different numbers of faces")
        return float(np.mean([translate_agreement(mine, theirs) for mine, theirs in zip(primary, shadow, strict=True)]))
    if primary.shape != shadow.shape:
        if shadow.ndim != 3 or primary.ndim != 3:
            raise Incomparable(f"images of shapes {list(primary.shape)} and {list(shadow.shape)}")
        from app import images

        shadow = images.resize(shadow, primary.shape[:2])
    return float(np.mean(np.abs(primary.astype(np.int16) - shadow.astype(np.int16))))


# stage -> (the measure's name, how it is computed from the answer and the shadow's)
MEASURES: dict[str, tuple[str, Callable[[Any, Any], float]]] = {
    "detect": ("box_iou", detect_agreement),
    "encode": ("latent_distance", encode_agreement),
    "search": ("topk_overlap", search_agreement),
    "translate": ("pixel_difference", translate_agreement),
}
