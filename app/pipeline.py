"""The portrait pipeline over any backend: decode -> detect -> crop -> {encode -> search} || {translate}.

No Flask here: views turn requests into calls of :class:`Pipeline` and its results
into pages or JSON. Sizes, dtypes and value ranges come from each servable's
metadata (read once per resolved version and cached by the backend) and from the
stage table in ``app.stages``, not from constants in this file.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app import images
from app.errors import BadInput, NoFaceFound
from app.serving.base import Backend, ModelRef, Served
from app.stages import DEFAULT_STAGES, Stage

MAX_K = 100
# Long side of the image the detector is sent: the detector letterboxes to 128 px
# itself, so more pixels only cost transfer and resizing.
DETECT_MAX_SIDE = 640
# A JPEG is first decoded at a reduced scale with at least this long side (Pillow draft).
DRAFT_MIN_SIDE = 800


@dataclass(frozen=True)
class Pin:
    """A version or a version label one stage's servable is pinned to for one request."""

    version: int | None = None
    label: str | None = None


Pins = Mapping[str, Pin]
_PIN_PARAM = re.compile(r"^(?:(?P<stage>[a-z]+)_)?(?P<kind>version|label)$")


def parse_pins(params: Mapping[str, str], stages: Mapping[str, Stage] = DEFAULT_STAGES) -> dict[str, Pin]:
    """Pins from request parameters: ``version``/``label`` for every stage, ``<stage>_version``/``<stage>_label``
    for one (e.g. ``?label=canary`` or ``?translate_version=3``). Unknown stages and bad values are a 400."""
    every: dict[str, str] = {}
    own: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        match = _PIN_PARAM.match(key)
        if match is None:
            continue
        stage = match["stage"]
        if stage is None:
            every[match["kind"]] = value
        elif stage in stages:
            own.setdefault(stage, {})[match["kind"]] = value
        else:
            raise BadInput(f"unknown stage {stage!r} in {key!r}; stages are {', '.join(stages)}")
    # A stage's own parameters replace the all-stages ones for that stage.
    chosen = {name: own.get(name, every) for name in stages if own.get(name, every)}
    pins = {}
    for name, kinds in chosen.items():
        if "version" in kinds and "label" in kinds:
            raise BadInput(f"{name}: give a version or a label, not both")
        version = kinds.get("version")
        if version is not None and (
            not (version.isascii() and version.isdigit()) or len(version) > 18 or not int(version)
        ):
            raise BadInput(f"{name}: version must be a positive integer, got {version[:40]!r}")
        pin = Pin(version=int(version) if version is not None else None, label=kinds.get("label"))
        stages[name].ref(version=pin.version, label=pin.label)  # validates the label's form
        pins[name] = pin
    return pins


@dataclass(frozen=True)
class Face:
    """A detected face: box (ymin, xmin, ymax, xmax) normalised to the photo, and its score."""

    box: tuple[float, float, float, float]
    score: float

    def to_dict(self) -> dict:
        return {"box": {"ymin": self.box[0], "xmin": self.box[1], "ymax": self.box[2], "xmax": self.box[3]},
                "score": self.score}  # fmt: skip


@dataclass(frozen=True)
class Match:
    """A gallery face near the query: its position in the gallery, its file name, its squared L2 distance."""

    index: int
    filename: str
    distance: float

    def to_dict(self) -> dict:
        return {"index": self.index, "filename": self.filename, "distance": self.distance}


@dataclass
class Photo:
    """A decoded upload: the pixels used, and the size of the photo as sent."""

    pixels: np.ndarray
    original_size: tuple[int, int]  # (width, height)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PortraitResult:
    """Everything one run of the pipeline found; timings are seconds per stage."""

    photo: Photo
    face: Face
    faces: list[Face]
    crop: np.ndarray
    matches: list[Match] | None = None
    anime: np.ndarray | None = None
    versions: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # Seconds inside the backend's predict call of each stage: the model's share of the stage's time.
    model_timings: dict[str, float] = field(default_factory=dict)
    meanwhile: Any = None  # what the caller's ``meanwhile`` work returned (see Pipeline.run)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Add the block's wall time to ``timings[stage]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - started


class Pipeline:
    """Runs the portrait stages over one backend. Thread-safe; one instance serves every request."""

    def __init__(
        self,
        backend: Backend,
        stages: Mapping[str, Stage] = DEFAULT_STAGES,
        *,
        threshold: float = 0.7,
        crop_scale: float = images.FACE_CROP_SCALE,
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
        timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.stages = stages
        self.threshold = threshold
        self.crop_scale = crop_scale
        self.max_pixels = max_pixels
        self.timeout = timeout
        self._gallery_sizes: dict[tuple[str, int], int] = {}

    def _predict(
        self, stage: str, ref: ModelRef, inputs: Mapping[str, np.ndarray], model_timings: dict[str, float] | None
    ) -> Served:
        """One backend call of ``stage``, its wall time added to ``model_timings[stage]`` when given."""
        with contextlib.nullcontext() if model_timings is None else _timed(model_timings, stage):
            return self.backend.predict_versioned(ref, inputs, timeout=self.timeout)

    def _ref(self, stage: str, pins: Pins | None, signature: str | None = None) -> ModelRef:
        pin = (pins or {}).get(stage, Pin())
        return self.stages[stage].ref(version=pin.version, label=pin.label, signature=signature)

    # -- stages ------------------------------------------------------------------------------------

    def decode(self, data: bytes) -> Photo:
        """Decode an upload; a large JPEG at a reduced scale (the crop is re-read at full size if it needs it)."""
        started = time.perf_counter()
        pixels, original = images.decode_photo(
            data, max_pixels=self.max_pixels, draft_size=(DRAFT_MIN_SIDE, DRAFT_MIN_SIDE)
        )
        return Photo(pixels, original, {"decode": time.perf_counter() - started})

    def detect_faces(
        self, photo: Photo, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> tuple[list[Face], int]:
        """Every face above the threshold, best first, and the detector version that answered."""
        stage = self.stages["detect"]
        ref = self._ref("detect", pins)
        meta = self.backend.metadata(ref)
        spec = meta.inputs[stage.inputs["image"]]
        pixels = photo.pixels
        long_side = max(pixels.shape[:2])
        if long_side > DETECT_MAX_SIDE:
            scale = DETECT_MAX_SIDE / long_side
            size = (max(1, round(pixels.shape[0] * scale)), max(1, round(pixels.shape[1] * scale)))
            pixels = images.resize(pixels, size)
        if spec.shape is not None and spec.shape[1] is not None:  # a detector with a fixed input size
            batch = images.model_input([pixels], spec, stage.value_range)
        else:
            batch = pixels[np.newaxis]
        out, served = self._predict("detect", ref, {stage.inputs["image"]: batch}, model_timings)
        count = int(np.asarray(out[stage.outputs["count"]]).reshape(-1)[0])
        boxes = np.asarray(out[stage.outputs["boxes"]])[0, :count]
        scores = np.asarray(out[stage.outputs["scores"]])[0, :count]
        faces = [
            Face(tuple(float(v) for v in box), float(score))
            for box, score in zip(boxes, scores, strict=True)
            if score >= self.threshold
        ]
        faces.sort(key=lambda face: face.score, reverse=True)
        return faces, meta.version if served is None else served

    def crop(self, photo: Photo, face: Face, data: bytes, needed_side: int) -> np.ndarray:
        """The square face crop, from pixels fine enough for the stages after it.

        When the photo was decoded at a reduced scale and the crop would hold fewer
        pixels than ``needed_side``, the photo is decoded again at full resolution.
        """
        crop = images.crop_face(photo.pixels, face.box, self.crop_scale)
        reduced = photo.pixels.shape[1] < photo.original_size[0]
        if reduced and crop.shape[0] < needed_side:
            full = images.decode_image(data, max_pixels=self.max_pixels)
            crop = images.crop_face(full, face.box, self.crop_scale)
        return crop

    def _image_side(self, stage: str, pins: Pins | None) -> int:
        spec = self.backend.metadata(self._ref(stage, pins)).inputs[self.stages[stage].inputs["image"]]
        return max(images.image_size_of(spec))

    def gallery_size(self, pins: Pins | None = None) -> int | None:
        """How many faces the search servable holds (None if it has no size signature)."""
        stage = self.stages["search"]
        signature = stage.extra_signatures.get("size")
        if signature is None:
            return None
        ref = self._ref("search", pins)
        expected = self.backend.metadata(ref).version  # cached: possibly a version already replaced
        size = self._gallery_sizes.get((stage.servable, expected))
        if size is None:
            # Asked of the ref itself, never of a version pinned from metadata that may be gone by now.
            out, served = self.backend.predict_versioned(self._ref("search", pins, signature), {}, self.timeout)
            size = int(np.asarray(out["size"]).reshape(-1)[0])
            self._gallery_sizes[(stage.servable, expected if served is None else served)] = size
        return size

    def check_k(self, k: int, pins: Pins | None = None) -> None:
        if not 1 <= k <= MAX_K:
            raise BadInput(f"k must be between 1 and {MAX_K}, got {k}")
        size = self.gallery_size(pins)
        if size is not None and k > size:
            raise BadInput(f"k={k} is larger than the gallery ({size} faces)")

    def encode_and_search(
        self,
        crop: np.ndarray,
        k: int,
        pins: Pins | None,
        timings: dict[str, float],
        model_timings: dict[str, float] | None = None,
    ) -> tuple[list[Match], int]:
        """The k nearest gallery faces to the crop, and the search servable version that answered."""
        encode, search = self.stages["encode"], self.stages["search"]
        with _timed(timings, "encode"):
            ref = self._ref("encode", pins)
            spec = self.backend.metadata(ref).inputs[encode.inputs["image"]]
            batch = images.model_input([crop], spec, encode.value_range)
            latent = self._predict("encode", ref, {encode.inputs["image"]: batch}, model_timings).outputs
            latent = np.asarray(latent[encode.outputs["latent"]], dtype=np.float32)
        with _timed(timings, "search"):
            ref = self._ref("search", pins)
            query = {search.inputs["latent"]: latent[:1], search.inputs["k"]: np.int32(k)}
            out, version = self._predict("search", ref, query, model_timings)
            if version is None:  # a backend that does not say which version answered
                version = self.backend.metadata(ref).version
        distances = np.asarray(out[search.outputs["distances"]])[0]
        indices = np.asarray(out[search.outputs["indices"]])[0]
        filenames = np.asarray(out[search.outputs["filenames"]])[0]
        matches = [
            Match(int(i), name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name), float(d))
            for i, name, d in zip(indices, filenames, distances, strict=True)
        ]
        return matches, version

    def translate(
        self, crop: np.ndarray, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> np.ndarray:
        stage = self.stages["translate"]
        ref = self._ref("translate", pins)
        spec = self.backend.metadata(ref).inputs[stage.inputs["image"]]
        batch = images.model_input([crop], spec, stage.value_range)
        out = self._predict("translate", ref, {stage.inputs["image"]: batch}, model_timings).outputs
        return images.model_output_image(np.asarray(out[stage.outputs["image"]])[0], stage.value_range)

    # -- whole runs --------------------------------------------------------------------------------

    def find_faces(self, data: bytes, pins: Pins | None = None) -> tuple[Photo, list[Face]]:
        """Decode and detect: every face above the threshold (possibly none)."""
        photo = self.decode(data)
        with _timed(photo.timings, "detect"):
            faces, _ = self.detect_faces(photo, pins)
        return photo, faces

    def run(
        self,
        data: bytes,
        *,
        k: int = 5,
        pins: Pins | None = None,
        search: bool = True,
        translate: bool = True,
        meanwhile: Callable[[PortraitResult], Any] | None = None,
    ) -> PortraitResult:
        """The whole chain; the search and translation branches run concurrently. 422 when no face is found.

        ``meanwhile(result)`` is the caller's own work that needs the photo, the face and the crop
        but no model's answer (e.g. encoding a page's images): it runs beside the translation, after
        the search, on a thread of the backend's pool (so it must not need a request context), instead
        of after the models; what it returns is ``result.meanwhile``.
        """
        started = time.perf_counter()
        if search:
            self.check_k(k, pins)
        photo = self.decode(data)
        timings = dict(photo.timings)
        model_timings: dict[str, float] = {}
        with _timed(timings, "detect"):
            faces, _ = self.detect_faces(photo, pins, model_timings)
        if not faces:
            raise NoFaceFound(f"no face found with a score of at least {self.threshold:g}")
        face = faces[0]
        with _timed(timings, "crop"):
            needed = max(
                [self._image_side(s, pins) for s, wanted in (("encode", search), ("translate", translate)) if wanted],
                default=0,
            )
            crop = self.crop(photo, face, data, needed)
        result = PortraitResult(
            photo=photo, face=face, faces=faces, crop=crop, timings=timings, model_timings=model_timings
        )
        beside = search or meanwhile is not None
        if translate and beside:
            # The branches are independent. The translation, the longer one, starts at once on this
            # thread; the search branch waits for a thread of the backend's pool.
            branch = self.backend.submit(self._beside_translation, result, k, pins, search, meanwhile)
            try:
                result.anime = self._timed_translate(crop, pins, timings, model_timings)
            finally:
                branch.result()
        elif translate:
            result.anime = self._timed_translate(crop, pins, timings, model_timings)
        elif beside:
            self._beside_translation(result, k, pins, search, meanwhile)
        timings["total"] = time.perf_counter() - started
        return result

    def _beside_translation(
        self,
        result: PortraitResult,
        k: int,
        pins: Pins | None,
        search: bool,
        meanwhile: Callable[[PortraitResult], Any] | None,
    ) -> None:
        if search:
            result.matches, result.versions["search"] = self.encode_and_search(
                result.crop, k, pins, result.timings, result.model_timings
            )
        if meanwhile is not None:
            result.meanwhile = meanwhile(result)

    def _timed_translate(
        self, crop: np.ndarray, pins: Pins | None, timings: dict[str, float], model_timings: dict[str, float]
    ) -> np.ndarray:
        with _timed(timings, "translate"):
            return self.translate(crop, pins, model_timings)
