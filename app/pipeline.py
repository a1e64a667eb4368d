"""The portrait pipeline over any backend: decode -> detect -> crop -> {encode -> search} || {translate}.

No Flask here: views turn requests into calls of :class:`Pipeline` and its results
into pages or JSON. What each stage calls, and how it is fed, comes from the
pipeline file (``app.pipeline_config``); sizes, dtypes and shapes come from each
servable's metadata (read once per resolved version and cached by the backend),
and each newly seen version is checked against its stage (``app.pipeline_check``)
before it is used. The pipeline tolerates what real exports look like: outputs with
or without a leading batch dimension, a count that is a scalar, ``[1]`` or absent,
fixed batch 1, float or uint8 images, latents of any rank, strings as bytes.

Each stage's call goes through the request's :class:`app.rollout.Routing`: a stage with a
traffic split in the pipeline file is answered by the client's arm (a pin in the request
wins), a failing canary by the stable arm, and a stage with a shadow arm sends it a copy
once the whole answer is ready. The result names the arm that served each stage.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, NamedTuple

import numpy as np

from app import images
from app.config import DEFAULT_MAX_FACES
from app.errors import BadInput, DeadlineExceeded, GatewayError, ModelFailure, NoFaceFound, ServingUnavailable
from app.pipeline_check import Misfit, PipelineMisfit, check_signature, fit_latent
from app.pipeline_config import DEFAULT_PIPELINE, STAGE_NAMES, PipelineConfig, StageConfig
from app.rollout import SHADOWS_IN_FLIGHT, LabelSource, Pin, Pins, RolloutObserver, Rollouts, Routing
from app.serving.base import Backend, ModelRef, Served, SignatureMetadata

__all__ = [
    "EVERY_FACE",
    "Face",
    "FaceChoice",
    "FaceResult",
    "Match",
    "Photo",
    "Pin",
    "Pins",
    "Pipeline",
    "PortraitResult",
    "SearchFound",
    "pins_from",
]

MAX_K = 100
# Faces encoded per call when the encoder takes any batch (build-index).
ENCODE_BATCH = 16
# Which faces a run answers for: the best (None), every face (EVERY_FACE), or one by its position in ``faces``.
EVERY_FACE = "all"
FaceChoice = int | Literal["all"] | None


def pins_from(values: Mapping[str, Any], stages: Sequence[str] = STAGE_NAMES) -> dict[str, Pin]:
    """Pins from validated request parameters: ``version``/``label`` for every stage, ``<stage>_version`` /
    ``<stage>_label`` for one (e.g. ``label=canary`` or ``translate_version=3``); a stage's own win."""
    every = {kind: values.get(kind) for kind in ("version", "label")}
    pins = {}
    for stage in stages:
        own = {kind: values.get(f"{stage}_{kind}") for kind in ("version", "label")}
        chosen = own if any(v is not None for v in own.values()) else every
        if chosen["version"] is not None and chosen["label"] is not None:
            raise BadInput(f"{stage}: give a version or a label, not both")
        if any(v is not None for v in chosen.values()):
            pins[stage] = Pin(version=chosen["version"], label=chosen["label"])
    return pins


@dataclass(frozen=True)
class Face:
    """A detected face: box (ymin, xmin, ymax, xmax) normalised to the photo, its score, and landmarks if given.

    ``keypoints`` are (y, x) normalised to the photo, in the detector's own order (the demo
    detector's: right eye, left eye, nose tip, mouth, right ear, left ear).
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Match:
    """A gallery face near the query: its position in the gallery, its file name, and its distance as the
    search servable reports it (the demo's: squared L2)."""

    index: int
    filename: str
    distance: float


class SearchFound(NamedTuple):
    """What the search stage found: the matches (of one query, or a list per query), the gallery version that
    answered, and the shards of a sharded gallery that could not answer (when the pipeline file allows that)."""

    matches: list
    version: int
    missing: tuple[str, ...] = ()


@dataclass
class Photo:
    """A decoded upload: the pixels used, and the size of the photo as sent."""

    pixels: np.ndarray
    original_size: tuple[int, int]  # (width, height)
    timings: dict[str, float] = field(default_factory=dict)
    data: bytes | None = None  # the upload, to decode again at full resolution when a crop needs it
    arms: dict[str, str] = field(default_factory=dict)  # stage -> the rollout arm that served it (find_faces)
    _full: np.ndarray | None = field(default=None, repr=False)

    @property
    def reduced(self) -> bool:
        return self.pixels.shape[1] < self.original_size[0]

    def full_pixels(self, max_pixels: int) -> np.ndarray:
        """The photo at full resolution (decoded again, once, if ``pixels`` is a reduced decode)."""
        if not self.reduced or self.data is None:
            return self.pixels
        if self._full is None:
            self._full = images.decode_image(self.data, max_pixels=max_pixels)
        return self._full


@dataclass
class FaceResult:
    """What one run found for one face of the photo: its position in ``faces``, its crops, matches and anime image."""

    index: int
    face: Face
    crop: np.ndarray  # the face as shown: the translator's crop, else the encoder's
    crops: dict[str, np.ndarray] = field(default_factory=dict)  # what each stage was fed, by stage
    matches: list[Match] | None = None
    anime: np.ndarray | None = None


@dataclass
class PortraitResult:
    """Everything one run of the pipeline found; timings are seconds per stage.

    ``per_face`` holds each face the run answered for, in ``faces`` order (the best face alone unless the run was
    asked for every face or another one); ``face``, ``crop``, ``crops``, ``matches`` and ``anime`` are its first's.
    """

    photo: Photo
    face: Face
    faces: list[Face]
    crop: np.ndarray  # the face as shown: the translator's crop, else the encoder's
    crops: dict[str, np.ndarray] = field(default_factory=dict)  # what each stage was fed, by stage
    matches: list[Match] | None = None
    per_face: list[FaceResult] = field(default_factory=list)
    missing_shards: tuple[str, ...] = ()  # shards of the gallery that did not answer (a partial answer)
    anime: np.ndarray | None = None
    versions: dict[str, int] = field(default_factory=dict)
    arms: dict[str, str] = field(default_factory=dict)  # stage -> the rollout arm that served it
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


def _rows(stage: StageConfig, role: str, out: Mapping[str, np.ndarray], rank: int) -> np.ndarray:
    """Output ``role`` of one call as ``rank`` dimensions: a leading batch dimension of one is dropped if present."""
    alias = stage.outputs[role]
    value = np.asarray(out[alias])
    if value.ndim == rank + 1 and value.shape[0] == 1:
        return value[0]
    if value.ndim == rank:
        return value
    wanted = "[" + ", ".join("n" for _ in range(rank)) + "]"
    raise ModelFailure(
        f"{stage.servable}: output {alias!r} ({role}) came back with shape {list(value.shape)}; "
        f"the pipeline reads {wanted} or [1, ...{wanted[1:]}"
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Pipeline:
    """Runs the portrait stages over one backend. Thread-safe; one instance serves every request."""

    def __init__(
        self,
        backend: Backend,
        config: PipelineConfig = DEFAULT_PIPELINE,
        *,
        threshold: float | None = None,
        max_pixels: int = images.DEFAULT_MAX_PIXELS,
        max_faces: int = DEFAULT_MAX_FACES,
        timeout: float | None = None,
        observer: RolloutObserver | None = None,
        labels: LabelSource | None = None,
        arm_check_interval: float = 2.0,
        shadows_in_flight: int = SHADOWS_IN_FLIGHT,
    ) -> None:
        self.backend = backend
        self.config = config
        self.threshold = config.detect.threshold if threshold is None else threshold
        self.max_pixels = max_pixels
        self.max_faces = max_faces
        self.timeout = timeout
        self._gallery_sizes: dict[tuple[str, int], int] = {}
        self._shards: ThreadPoolExecutor | None = None
        # (servable, version, signature) -> misfits found when that version was first seen.
        self._checked: dict[tuple[str, int, str], list[Misfit]] = {}
        self._check_lock = threading.Lock()
        # The pipeline file's traffic splits and shadows (none: every stage asks its servable's default).
        self.rollouts = Rollouts(
            config,
            backend,
            observer=observer,
            labels=labels,
            check_interval=arm_check_interval,
            shadows_in_flight=shadows_in_flight,
        )

    def _predict(
        self, stage: str, ref: ModelRef, inputs: Mapping[str, np.ndarray], model_timings: dict[str, float] | None
    ) -> Served:
        """One backend call of ``stage``, its wall time added to ``model_timings[stage]`` when given."""
        with contextlib.nullcontext() if model_timings is None else _timed(model_timings, stage):
            return self.backend.predict_versioned(ref, inputs, timeout=self.timeout)

    def _ref(
        self, stage: str, pins: Pins | None, signature: str | None = None, servable: str | None = None
    ) -> ModelRef:
        pin = (pins or {}).get(stage, Pin())
        return self.config[stage].ref(version=pin.version, label=pin.label, signature=signature, servable=servable)

    def _metadata(
        self, stage: str, pins: Pins | None, servable: str | None = None
    ) -> tuple[ModelRef, SignatureMetadata]:
        """The ref of a stage's call and its signature, checked against the stage the first time a version is seen."""
        ref = self._ref(stage, pins, servable=servable)
        meta = self.backend.metadata(ref)
        key = (ref.name, meta.version, ref.signature)
        misfits = self._checked.get(key)
        if misfits is None:
            misfits = check_signature(stage, self.config[stage], meta)
            with self._check_lock:
                self._checked[key] = misfits
        if misfits:
            raise PipelineMisfit(self.config.source, [(stage, misfit) for misfit in misfits])
        return ref, meta

    def _feed(self, stage: StageConfig, spec: Any, pictures: Sequence[np.ndarray], **options: Any) -> np.ndarray:
        feed = stage.image
        return images.model_input(pictures, spec, feed.range, channels=feed.channels, size=feed.size, **options)

    # -- stages ------------------------------------------------------------------------------------

    def decode(self, data: bytes, min_side: int = 0) -> Photo:
        """Decode an upload; a large JPEG at a reduced scale whose long side is still the detector's ``max_side``, or
        ``min_side`` if larger (what the caller shows of the photo); a crop is re-read at full size if it needs it."""
        started = time.perf_counter()
        pixels, original = images.decode_photo(
            data, max_pixels=self.max_pixels, min_side=max(self.config.detect.max_side, min_side)
        )
        return Photo(pixels, original, {"decode": time.perf_counter() - started}, data=data)

    def detect_faces(
        self, photo: Photo, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> tuple[list[Face], int]:
        """Every face above the threshold, best first, and the detector version that answered."""
        stage = self.config.detect
        ref, meta = self._metadata("detect", pins)
        spec = meta.inputs[stage.inputs["image"]]
        pixels = photo.pixels
        long_side = max(pixels.shape[:2])
        if long_side > stage.max_side:
            scale = stage.max_side / long_side
            pixels = images.resize(
                pixels, (max(1, round(pixels.shape[0] * scale)), max(1, round(pixels.shape[1] * scale)))
            )
        batch = self._feed(stage, spec, [pixels], keep_size=True)
        out, served = self._predict("detect", ref, {stage.inputs["image"]: batch}, model_timings)
        boxes = _rows(stage, "boxes", out, 2).astype(np.float64, copy=False)
        scores = _rows(stage, "scores", out, 1).astype(np.float64, copy=False)
        count = len(scores)
        if stage.outputs.get("count") is not None:
            count = min(count, int(np.asarray(out[stage.outputs["count"]]).reshape(-1)[0]))
        points = _rows(stage, "keypoints", out, 3) if stage.outputs.get("keypoints") is not None else None
        if boxes.ndim != 2 or boxes.shape[-1] != 4 or len(boxes) < count:
            raise ModelFailure(f"{stage.servable}: boxes came back as {list(boxes.shape)}, not [N, 4] for N scores")
        boxes, scores = boxes[:count], scores[:count]
        if stage.boxes.order == "xyxy":
            boxes = boxes[:, [1, 0, 3, 2]]
        if stage.boxes.units == "pixels":
            height, width = batch.shape[1:3]
            boxes = boxes / np.array([height, width, height, width], np.float64)
            if points is not None:
                points = points / np.array([height, width], np.float64)
        faces = []
        for i in range(count):
            if scores[i] < self.threshold:
                continue
            landmarks = None
            if points is not None and i < len(points):
                landmarks = tuple((float(y), float(x)) for y, x in np.asarray(points[i]).reshape(-1, 2))
            faces.append(Face(tuple(float(v) for v in boxes[i]), float(scores[i]), landmarks))
        faces.sort(key=lambda face: face.score, reverse=True)
        return faces, meta.version if served is None else served

    def face_crop(self, stage_name: str, photo: Photo, face: Face, side: int) -> np.ndarray:
        """What stage ``stage_name`` is fed of the face: the square box crop or the aligned chip.

        When the photo was decoded at a reduced scale and the face there holds fewer than
        ``side`` pixels across, the crop is taken from the photo at full resolution.
        """
        stage = self.config[stage_name]
        aligned = self._crop_kind(stage_name) == "aligned"
        scale = getattr(stage, "crop_scale", images.FACE_CROP_SCALE)
        pixels = photo.pixels
        top, _, bottom, _ = images.face_square(face.box, *pixels.shape[:2], scale)
        if photo.reduced and bottom - top < side:
            pixels = photo.full_pixels(self.max_pixels)
        if aligned:
            if face.keypoints is None:
                raise PipelineMisfit(
                    self.config.source,
                    [(stage_name, Misfit("detect.outputs", "the detector gave no keypoints for the aligned crop",
                                         f"set [detect.outputs] keypoints, or set [{stage_name}] crop = \"box\""))],
                )  # fmt: skip
            from app.alignment import aligned_face_chip  # OpenCV warp; only stages that ask for it pay

            return aligned_face_chip(pixels, np.asarray(face.keypoints, np.float64), size=side)
        return images.crop_face(pixels, face.box, scale)

    def input_side(self, stage: str, pins: Pins | None = None) -> int:
        """The long side of the image a stage's servable takes."""
        config = self.config[stage]
        _, meta = self._metadata(stage, pins)
        return max(images.image_size_of(meta.inputs[config.inputs["image"]], config.image.size))

    def gallery_size(self, pins: Pins | None = None) -> int | None:
        """How many faces the gallery holds, every shard's together (None if the pipeline file names no size
        signature)."""
        sizes = self._shard_sizes(pins)
        return None if sizes is None else sum(sizes.values())

    def _shard_sizes(self, pins: Pins | None) -> dict[str, int] | None:
        """Each search servable's (each shard's) gallery size, asked once per version."""
        stage = self.config.search
        signature = stage.signatures.get("size")
        if signature is None:
            return None
        sizes = {}
        for servable in stage.servables:
            ref = self._ref("search", pins, servable=servable)
            expected = self.backend.metadata(ref).version  # cached: possibly a version already replaced
            size = self._gallery_sizes.get((servable, expected))
            if size is None:
                # Asked of the ref itself, never of a version pinned from metadata that may be gone by now.
                asked = self._ref("search", pins, signature, servable=servable)
                out, served = self.backend.predict_versioned(asked, {}, self.timeout)
                size = int(np.asarray(out["size"]).reshape(-1)[0])
                self._gallery_sizes[(servable, expected if served is None else served)] = size
            sizes[servable] = size
        return sizes

    def check_k(self, k: int, pins: Pins | None = None) -> None:
        if not 1 <= k <= MAX_K:
            raise BadInput(f"k must be between 1 and {MAX_K}, got {k}")
        size = self.gallery_size(pins)
        if size is not None and k > size:
            raise BadInput(f"k={k} is larger than the gallery ({size} faces)")

    def encode(
        self,
        crops: Sequence[np.ndarray],
        pins: Pins | None = None,
        model_timings: dict[str, float] | None = None,
        *,
        batch_size: int = ENCODE_BATCH,
    ) -> np.ndarray:
        """The latents of face crops, [N, *latent_shape] float32, ``batch_size`` a call (or what a fixed batch
        dimension of the encoder allows)."""
        stage = self.config.encode
        ref, meta = self._metadata("encode", pins)
        spec = meta.inputs[stage.inputs["image"]]
        if spec.shape is not None and spec.shape[0] is not None:
            batch_size = int(spec.shape[0])
        latents = []
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            out = self._predict("encode", ref, {stage.inputs["image"]: self._feed(stage, spec, chunk)}, model_timings)
            value = np.asarray(out.outputs[stage.outputs["latent"]], dtype=np.float32)
            if len(chunk) == 1:
                # One face: a leading batch dimension of one, if there is one, is not part of the latent.
                latents.append(value[0] if value.ndim >= 2 and value.shape[0] == 1 else value)
            elif value.ndim >= 2 and value.shape[0] == len(chunk):
                latents.extend(value)
            else:
                raise ModelFailure(
                    f"{stage.servable}: {len(chunk)} faces gave a latent of shape {list(value.shape)}; "
                    "a batch of faces must give one latent each"
                )
        return np.stack(latents)

    def search(
        self, latent: np.ndarray, k: int, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> SearchFound:
        """The k nearest gallery faces to one face's latent (every shard searched, the k nearest of all kept)."""
        found = self.search_many(np.asarray(latent)[np.newaxis], k, pins, model_timings)
        return SearchFound(found.matches[0], found.version, found.missing)

    def search_many(
        self, latents: np.ndarray, k: int, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> SearchFound:
        """The k nearest gallery faces to each of several latents (``[B, *latent]``), in one call per servable."""
        stage = self.config.search
        if len(stage.servables) == 1:
            matches, version = self._search_servable(stage.servable, latents, k, pins, model_timings)
            return SearchFound(matches, version)
        sizes = self._shard_sizes(pins) or {}
        with contextlib.nullcontext() if model_timings is None else _timed(model_timings, "search"):
            futures = {
                servable: self._shard_pool().submit(
                    self._search_servable, servable, latents, min(k, sizes.get(servable, k)), pins, None
                )
                for servable in stage.servables
            }
            answers, missing = {}, []
            for servable, future in futures.items():
                try:
                    answers[servable] = future.result()
                except (ServingUnavailable, DeadlineExceeded, GatewayError) as exc:
                    if not stage.partial or not isinstance(exc, ServingUnavailable | DeadlineExceeded):
                        raise _shard_failed(servable, exc) from exc
                    missing.append(servable)
        if not answers:
            raise ServingUnavailable(f"no shard of the gallery answered ({', '.join(missing)})")
        merged = [
            heapq.nsmallest(k, (match for matches, _ in answers.values() for match in matches[query]),
                            key=lambda match: match.distance)
            for query in range(len(latents))
        ]  # fmt: skip
        return SearchFound(merged, max(version for _, version in answers.values()), tuple(missing))

    def _shard_pool(self) -> ThreadPoolExecutor:
        """Threads for the shards' calls: their own pool (a search already runs on the backend's, which must not
        wait on itself)."""
        with self._check_lock:
            if self._shards is None:
                self._shards = ThreadPoolExecutor(
                    max_workers=4 * len(self.config.search.servables), thread_name_prefix="search-shard"
                )
            return self._shards

    def _search_servable(
        self,
        servable: str,
        latents: np.ndarray,
        k: int,
        pins: Pins | None,
        model_timings: dict[str, float] | None,
    ) -> tuple[list[list[Match]], int]:
        """One search servable's k nearest faces to each latent, and its version that answered."""
        stage = self.config.search
        ref, meta = self._metadata("search", pins, servable=servable)
        latent_spec, k_spec = meta.inputs[stage.inputs["latent"]], meta.inputs[stage.inputs["k"]]
        try:
            fitted = [fit_latent(latent, latent_spec).astype(latent_spec.dtype, copy=False) for latent in latents]
        except ValueError as exc:
            raise PipelineMisfit(
                self.config.source,
                [("search", Misfit("search.inputs", str(exc), "index the gallery with the encoder the pipeline uses"))],
            ) from exc
        batched = latent_spec.shape is None or (latent_spec.shape[0] is None and fitted[0].shape[:1] == (1,))
        if len(latents) > 1 and not batched:  # a servable of batch one: one call a query
            answers = [
                self._search_servable(servable, latent[np.newaxis], k, pins, model_timings) for latent in latents
            ]
            return [matches[0] for matches, _ in answers], max(version for _, version in answers)
        queries = fitted[0] if len(latents) == 1 else np.concatenate(fitted)
        k_value = np.asarray(k, dtype=k_spec.dtype)
        if k_spec.shape is not None and len(k_spec.shape) == 1:
            k_value = k_value.reshape(1)
        out, version = self._predict(
            "search", ref, {stage.inputs["latent"]: queries, stage.inputs["k"]: k_value}, model_timings
        )
        if version is None:  # a backend that does not say which version answered
            version = self.backend.metadata(ref).version
        rank = 1 if len(latents) == 1 else 2
        columns = [_rows(stage, role, out, rank) for role in ("distances", "indices", "filenames")]
        if len(latents) == 1:
            columns = [column[np.newaxis] for column in columns]
        distances, indices, filenames = columns
        if not distances.shape == indices.shape == filenames.shape or len(distances) != len(latents):
            raise ModelFailure(
                f"{servable}: distances {list(distances.shape)}, indices {list(indices.shape)} and file names "
                f"{list(filenames.shape)} for {len(latents)} queries"
            )
        matches = [
            [Match(int(i), _text(name), float(d)) for i, name, d in zip(row_i, row_f, row_d, strict=True)]
            for row_i, row_f, row_d in zip(indices, filenames, distances, strict=True)
        ]
        return matches, version

    def translate(
        self, crop: np.ndarray, pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> np.ndarray:
        """The anime image of one face crop."""
        return self.translate_many([crop], pins, model_timings)[0]

    def translate_many(
        self, crops: Sequence[np.ndarray], pins: Pins | None = None, model_timings: dict[str, float] | None = None
    ) -> list[np.ndarray]:
        """The anime image of each face crop: one call for them all, or one a face when the translator's batch
        dimension is fixed (the demo's is 1)."""
        stage = self.config.translate
        ref, meta = self._metadata("translate", pins)
        spec = meta.inputs[stage.inputs["image"]]
        batch_size = len(crops)
        if spec.shape is not None and spec.shape[0] is not None:
            batch_size = int(spec.shape[0])
        found = []
        for start in range(0, len(crops), batch_size):
            chunk = crops[start : start + batch_size]
            out = self._predict(
                "translate", ref, {stage.inputs["image"]: self._feed(stage, spec, chunk)}, model_timings
            )
            value = np.asarray(out.outputs[stage.outputs["image"]])
            if len(chunk) == 1:
                value = _rows(stage, "image", out.outputs, 3)[np.newaxis]
            if value.ndim != 4 or value.shape[-1] != 3 or len(value) != len(chunk):
                shape = list(value.shape[1:] if len(chunk) == 1 else value.shape)
                wanted = "[H, W, 3]" if len(chunk) == 1 else f"[{len(chunk)}, H, W, 3]"
                raise ModelFailure(f"{stage.servable}: the image came back as {shape}, not {wanted}")
            found.extend(
                images.model_output_image(image, stage.image.range, channels=stage.image.channels) for image in value
            )
        return found

    # -- whole runs --------------------------------------------------------------------------------

    def find_faces(
        self, data: bytes, pins: Pins | None = None, *, client: str | None = None
    ) -> tuple[Photo, list[Face]]:
        """Decode and detect: every face above the threshold (possibly none). ``photo.arms`` names the arm."""
        routing = self.rollouts.route(client, pins)
        photo = self.decode(data)
        with _timed(photo.timings, "detect"):
            found = routing.call("detect", lambda pinned: self.detect_faces(photo, pinned))
        routing.shadow("detect", lambda pinned: self.detect_faces(photo, pinned), found)
        photo.arms = dict(routing.served)
        routing.start_shadows()
        return photo, found[0]

    def run(
        self,
        data: bytes,
        *,
        k: int = 5,
        pins: Pins | None = None,
        search: bool = True,
        translate: bool = True,
        meanwhile: Callable[[PortraitResult], Any] | None = None,
        client: str | None = None,
        faces: FaceChoice = None,
        photo_side: int = 0,
    ) -> PortraitResult:
        """The whole chain; the search and translation branches run concurrently. 422 when no face is found.

        ``faces`` says which faces it answers for: the best (None), every face (``"all"``: 400 for a photo with
        more than ``max_faces``), or one by its position in the detector's list, best first (400 past its end).
        Several faces go to the encoder as one batch and to each search servable as one call (the translator
        too, unless its batch dimension is fixed); ``k`` and the pins apply to each face.

        ``photo_side``: the long side the caller needs of ``result.photo.pixels`` (a page showing the photo); a
        large JPEG is decoded no smaller than that, nor than the detector's ``max_side``.

        ``client`` is who asks (an API key's digest or an address): it keeps each stage with a traffic
        split on one arm for that client (None: an arm drawn at random). Shadow copies are sent once
        the answer is ready (a 422 is an answer too: the detector's copy still goes); ``result.arms``
        names the arm that served each stage.

        ``meanwhile(result)`` is the caller's own work that needs the photo, the face and the crop
        but no model's answer (e.g. encoding a page's images): it runs beside the translation, after
        the search, on a thread of the backend's pool (so it must not need a request context), instead
        of after the models; what it returns is ``result.meanwhile``.
        """
        started = time.perf_counter()
        routing = self.rollouts.route(client, pins)
        try:
            return self._run(routing, started, data, k, search, translate, meanwhile, faces, photo_side)
        finally:
            routing.start_shadows()

    def _run(
        self,
        routing: Routing,
        started: float,
        data: bytes,
        k: int,
        search: bool,
        translate: bool,
        meanwhile: Callable[[PortraitResult], Any] | None,
        choice: FaceChoice,
        photo_side: int,
    ) -> PortraitResult:
        if search:
            routing.call("search", lambda pinned: self.check_k(k, pinned), counted=False)
        photo = self.decode(data, photo_side)
        timings = dict(photo.timings)
        model_timings: dict[str, float] = {}
        with _timed(timings, "detect"):
            found = routing.call("detect", lambda pinned: self.detect_faces(photo, pinned, model_timings))
        routing.shadow("detect", lambda pinned: self.detect_faces(photo, pinned), found)
        faces = found[0]
        if not faces:
            raise NoFaceFound(f"no face found with a score of at least {self.threshold:g}")
        chosen = self.chosen_faces(faces, choice)
        with _timed(timings, "crop"):
            wanted = [name for name, on in (("encode", search), ("translate", translate)) if on]
            sides = {name: routing.call(name, partial(self.input_side, name), counted=False) for name in wanted}
            per_face = [self._face_crops(photo, index, faces[index], sides) for index in chosen]
        first = per_face[0]
        result = PortraitResult(
            photo=photo,
            face=first.face,
            faces=faces,
            crop=first.crop,
            crops=first.crops,
            per_face=per_face,
            timings=timings,
            model_timings=model_timings,
        )
        beside = search or meanwhile is not None
        if translate and beside:
            # The branches are independent. The translation, the longer one, starts at once on this
            # thread; the search branch waits for a thread of the backend's pool.
            branch = self.backend.submit(self._beside_translation, result, k, routing, search, meanwhile)
            try:
                self._timed_translate(result, routing)
            finally:
                branch.result()
        elif translate:
            self._timed_translate(result, routing)
        elif beside:
            self._beside_translation(result, k, routing, search, meanwhile)
        timings["total"] = time.perf_counter() - started
        result.arms = {stage: routing.served[stage] for stage in STAGE_NAMES if stage in routing.served}
        return result

    def _crop_kind(self, stage: str) -> str:
        return getattr(self.config[stage], "crop", "box")

    def chosen_faces(self, faces: Sequence[Face], choice: FaceChoice) -> list[int]:
        """The positions in ``faces`` (best first) that a run answers for; 400 for a choice the photo cannot meet."""
        if choice is None:
            return [0]
        if choice == EVERY_FACE:
            if len(faces) > self.max_faces:
                raise BadInput(
                    f"the photo has {len(faces)} faces; a request asks about at most {self.max_faces} "
                    f"(GATEWAY_MAX_FACES): ask for one face with face=<index>, 0 to {len(faces) - 1}"
                )
            return list(range(len(faces)))
        if not isinstance(choice, int) or isinstance(choice, bool):
            raise ValueError(f"faces: {choice!r} is not 'all', a face's position or None")
        if not 0 <= choice < len(faces):
            found = f"{len(faces)} face" + ("s" if len(faces) != 1 else "")
            raise BadInput(f"face={choice}, but the photo has {found}: ask for face=0 to face={len(faces) - 1}")
        return [choice]

    def _face_crops(self, photo: Photo, index: int, face: Face, sides: Mapping[str, int]) -> FaceResult:
        """One face's crop for each stage that runs (``sides``: stage -> its input's long side), and the one shown."""
        crops = {name: self.face_crop(name, photo, face, side) for name, side in sides.items()}
        shown = crops.get("translate")
        if shown is None:  # the page shows the box crop; an aligned chip is the encoder's view only
            shown = crops["encode"] if self._crop_kind("encode") == "box" else images.crop_face(photo.pixels, face.box)
        return FaceResult(index, face, shown, crops)

    def _beside_translation(
        self,
        result: PortraitResult,
        k: int,
        routing: Routing,
        search: bool,
        meanwhile: Callable[[PortraitResult], Any] | None,
    ) -> None:
        if search:
            crops = [face.crops["encode"] for face in result.per_face]
            timings, model_timings = result.timings, result.model_timings
            # Every face in one call of each stage: the encoder's batch is as large as the request's faces.
            encode = partial(self.encode, crops, batch_size=len(crops))
            with _timed(timings, "encode"):
                latents = routing.call("encode", lambda pinned: encode(pinned, model_timings))
            routing.shadow("encode", lambda pinned: encode(pinned), latents)
            with _timed(timings, "search"):
                found = routing.call("search", lambda pinned: self.search_many(latents, k, pinned, model_timings))
            routing.shadow("search", lambda pinned: self.search_many(latents, k, pinned), found)
            for face, matches in zip(result.per_face, found.matches, strict=True):
                face.matches = matches
            result.matches, result.versions["search"], result.missing_shards = (
                found.matches[0],
                found.version,
                found.missing,
            )
        if meanwhile is not None:
            result.meanwhile = meanwhile(result)

    def _timed_translate(self, result: PortraitResult, routing: Routing) -> None:
        crops = [face.crops["translate"] for face in result.per_face]
        with _timed(result.timings, "translate"):
            animes = routing.call("translate", lambda pinned: self.translate_many(crops, pinned, result.model_timings))
        routing.shadow("translate", lambda pinned: self.translate_many(crops, pinned), animes)
        for face, anime in zip(result.per_face, animes, strict=True):
            face.anime = anime
        result.anime = animes[0]


def _shard_failed(servable: str, exc: GatewayError) -> GatewayError:
    """A shard's failure, said as the gallery's: which shard, and what it answered (the same status and code)."""
    said = copy.copy(exc)
    said.message = f"the gallery's shard {servable} did not answer: {exc.message}"
    said.args = (said.message,)
    return said
