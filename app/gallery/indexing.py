"""Faces from a folder of photos, found and encoded as the gateway does for an upload, at the speed the models allow.

Each photo is decoded the way an upload is (upright, a large JPEG at a reduced scale, the crop
taken at full resolution when the face is small there), its best face (or, with ``all_faces``,
each face, named ``photo#1``, ``photo#2``... from the left) found by the pipeline's detector and
fed to the encoder as the pipeline feeds it: a gallery face and the same photo uploaded later land
on the same latent.

Speed: photos are decoded and sent to the detector by a pool of threads (decoding releases the
GIL, and so does a model call), several photos in flight at once, while the faces they give are
encoded in batches on the calling thread. An interrupted run (Ctrl-C) keeps what was encoded in a
work folder beside the search servable; ``resume=True`` continues it, encoding only the photos
not done yet. Files that cannot be read, or show no face, are listed, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from app.errors import GatewayError, PayloadTooLarge, UnsupportedMediaType
from app.gallery.record import Faces, read_text_column, text_column
from app.images import ACCEPTED_FORMATS, FACE_CROP_SCALE, crop_face, resize
from app.pipeline import Face, Pipeline
from app.pipeline_config import DEFAULT_PIPELINE, EncodeStage, PipelineConfig
from app.serving.base import Backend

# Every file name ending Pillow reads as one of the formats the gateway accepts (.jpg, .png, .webp, .bmp, ...).
GALLERY_SUFFIXES = tuple(
    sorted(suffix for suffix, kind in Image.registered_extensions().items() if kind in ACCEPTED_FORMATS)
)
_FORMATS = [{"WEBP": "WebP"}.get(kind, kind) for kind in ACCEPTED_FORMATS]
FORMAT_NAMES = f"{', '.join(_FORMATS[:-1])} or {_FORMATS[-1]}"  # "JPEG, PNG, WebP or BMP"
THUMBNAIL_SIZE = 160
THUMBNAIL_QUALITY = 85
FACE_SEPARATOR = "#"  # a face's name with all_faces: "<photo>#<n>", faces numbered from the left
WORK_FOLDER = ".build-index"  # beside the search servable's versions; hidden, so never taken for a version
CHUNK_PHOTOS = 256  # photos between two saves of the work done (what an interrupted run keeps)
DEFAULT_WORKERS = max(2, min(8, os.cpu_count() or 2))
STEPS = ("decode", "detect", "crop", "encode")


class EmptyGallery(ValueError):
    """Nothing in the folder could be indexed."""


class Interrupted(Exception):
    """The run was stopped (Ctrl-C); what was encoded is kept for ``resume``."""

    def __init__(self, done: int, total: int, work: Path) -> None:
        super().__init__(f"interrupted after {done} of {total} photos")
        self.done, self.total, self.work = done, total, work


@dataclass
class Progress:
    """Where a run stands: photos done of the total, faces found, seconds, and the share of time per step."""

    total: int
    done: int = 0
    resumed: int = 0  # photos done by an earlier, interrupted run
    faces: int = 0
    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("decode", "detect", "crop", "encode"), 0.0)
    )

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        """Photos a second in this run (those an earlier run did are not counted)."""
        done = self.done - self.resumed
        return done / self.elapsed if done and self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate else None


@dataclass
class IndexReport:
    """What indexing did: the faces indexed (by name) and, with reasons, the files it could not use."""

    indexed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    photos: int = 0
    resumed: int = 0
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds spent per step, summed over the threads


@dataclass
class FolderFaces:
    """The faces of a folder, ready for the gallery: the record's rows, their thumbnails, and the report."""

    faces: Faces
    thumbnails: dict[str, bytes]
    report: IndexReport


def gallery_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(photos, other files) under folder, each in sorted order; hidden files and folders are ignored."""
    photos, others = [], []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        (photos if path.suffix.lower() in GALLERY_SUFFIXES else others).append(path)
    return photos, others


def unreadable_reason(exc: GatewayError | OSError) -> str:
    """Why a gallery file could not be read, in a person's words rather than HTTP's."""
    if isinstance(exc, UnsupportedMediaType):
        return f"not a {FORMAT_NAMES} image"
    if isinstance(exc, PayloadTooLarge):
        return exc.message.replace("the image", "the photo")
    return getattr(exc, "message", None) or str(exc)


def _whole_picture(image: np.ndarray, stage: EncodeStage) -> np.ndarray:
    """What the encoder gets of a picture that is already a face: an aligned-style chip framed so nothing is cut,
    or the picture itself for a box-fed encoder (the crop the pipeline would make of a face filling it)."""
    if stage.crop == "aligned":
        from app.alignment import whole_image_chip

        return whole_image_chip(image)
    return image


def thumbnail(image: np.ndarray, face: Face | None) -> bytes:
    """A colour JPEG of the face as the result page shows it (the square box crop), or of the whole picture."""
    picture = image if face is None else crop_face(image, face.box, FACE_CROP_SCALE)
    height, width = picture.shape[:2]
    scale = THUMBNAIL_SIZE / max(height, width)
    picture = resize(picture, (max(1, round(height * scale)), max(1, round(width * scale))))
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


@dataclass
class _Found:
    """One photo's faces, cropped for the encoder (the work of a pool thread)."""

    photo: str
    entries: list[tuple[str, np.ndarray, bytes, tuple[float, float, float, float] | None, float]]
    unreadable: str | None = None
    no_face: bool = False


class _Work:
    """The work folder of a run: chunks of encoded faces and the photos they came from (for resume)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.npz")) if self.folder.is_dir() else []

    def load(self) -> tuple[list[dict], set[str], list[tuple[str, str]], list[str]]:
        """(face chunks, photos done, unreadable, without a face) of earlier runs."""
        chunks, done, unreadable, no_face = [], set(), [], []
        for path in self.chunks():
            with np.load(path, allow_pickle=False) as data:
                chunk = {key: data[key] for key in data.files}
            meta = json.loads(bytes(chunk.pop("meta")).decode("utf-8"))
            done.update(meta["photos"])
            unreadable += [tuple(item) for item in meta["unreadable"]]
            no_face += meta["no_face"]
            chunks.append(chunk)
        return chunks, done, unreadable, no_face

    def save(self, rows: dict[str, list], photos: list[str], unreadable: list, no_face: list) -> None:
        """One chunk, written whole (a temporary file renamed into place)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        index = len(self.chunks()) + 1
        arrays: dict[str, np.ndarray] = {
            "descriptors": np.asarray(rows["descriptors"], np.float32),
            "boxes": np.asarray(rows["boxes"], np.float32).reshape(-1, 4),
            "scores": np.asarray(rows["scores"], np.float32),
            "meta": np.frombuffer(
                json.dumps({"photos": photos, "unreadable": unreadable, "no_face": no_face}).encode("utf-8"),
                dtype=np.uint8,
            ),
        }
        for column in ("names", "sources"):
            arrays[f"{column}_utf8"], arrays[f"{column}_offsets"] = text_column(rows[column])
        blobs = rows["thumbnails"]
        arrays["thumbnails_utf8"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays["thumbnails_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        temporary = self.folder / f".chunk-{index:06d}.npz.tmp"
        with temporary.open("wb") as out:
            np.savez(out, **arrays)
        temporary.rename(self.folder / f"chunk-{index:06d}.npz")

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def work_folder(search_base: Path, folder: Path, options: dict) -> Path:
    """Where a run keeps its work: one folder per photo folder and options, beside the search servable."""
    key = json.dumps({"folder": str(Path(folder).resolve()), **options}, sort_keys=True)
    return Path(search_base) / WORK_FOLDER / hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def collect_faces(
    gallery_dir: Path,
    backend: Backend,
    *,
    config: PipelineConfig = DEFAULT_PIPELINE,
    whole_image: bool = False,
    all_faces: bool = False,
    threshold: float | None = None,
    batch_size: int = 16,
    workers: int = DEFAULT_WORKERS,
    work: Path | None = None,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    stop: threading.Event | None = None,
) -> FolderFaces:
    """Find, encode and thumbnail the faces of every photo of a folder; write nothing but the work folder.

    ``work`` keeps chunks of encoded faces while the run goes (deleted when it ends, kept when it is
    interrupted); with ``resume`` the photos its chunks hold are not encoded again. ``stop`` (or Ctrl-C)
    ends the run early with :class:`Interrupted`, after saving what was encoded.
    """
    gallery_dir = Path(gallery_dir)
    if not gallery_dir.is_dir():
        raise EmptyGallery(f"{gallery_dir} is not a folder")
    photos, others = gallery_files(gallery_dir)
    report = IndexReport(skipped=[p.relative_to(gallery_dir).as_posix() for p in others], photos=len(photos))
    pipeline = Pipeline(backend, config, threshold=threshold)
    encoder = f"{config.encode.servable}@{backend.metadata(config.encode.ref()).version}"
    side = pipeline.input_side("encode")
    store = _Work(work) if work is not None else None
    chunks: list[dict] = []
    done_before: set[str] = set()
    if store is not None and resume:
        chunks, done_before, unreadable, no_face = store.load()
        report.unreadable += unreadable
        report.no_face += no_face
    elif store is not None:
        store.discard()
    state = Progress(total=len(photos), done=len(done_before), resumed=len(done_before))
    report.resumed = len(done_before)
    todo = [path for path in photos if path.relative_to(gallery_dir).as_posix() not in done_before]
    rows: dict[str, list] = {key: [] for key in ("descriptors", "names", "sources", "boxes", "scores", "thumbnails")}
    pending: list[tuple[str, np.ndarray, bytes, tuple | None, float, str]] = []
    chunk_photos: list[str] = []
    chunk_unreadable: list[tuple[str, str]] = []
    chunk_no_face: list[str] = []
    lock = threading.Lock()

    def timed(step: str, started: float) -> None:
        with lock:
            state.seconds[step] += time.perf_counter() - started

    def find(path: Path) -> _Found:
        name = path.relative_to(gallery_dir).as_posix()
        started = time.perf_counter()
        try:
            data = path.read_bytes()
            photo = pipeline.decode(data)
        except (GatewayError, OSError) as exc:
            return _Found(name, [], unreadable=unreadable_reason(exc))
        finally:
            timed("decode", started)
        if whole_image:
            started = time.perf_counter()
            full = photo.full_pixels(pipeline.max_pixels)
            entry = (name, _whole_picture(full, config.encode), thumbnail(full, None), None, float("nan"))
            timed("crop", started)
            return _Found(name, [entry])
        started = time.perf_counter()
        found, _ = pipeline.detect_faces(photo)
        timed("detect", started)
        if not found:
            return _Found(name, [], no_face=True)
        started = time.perf_counter()
        if all_faces:
            found = sorted(found, key=lambda face: (face.box[1] + face.box[3], face.box[0] + face.box[2]))
            named = [(f"{name}{FACE_SEPARATOR}{n}", face) for n, face in enumerate(found, start=1)]
        else:
            named = [(name, found[0])]
        entries = [
            (
                entry,
                pipeline.face_crop("encode", photo, face, side),
                thumbnail(photo.pixels, face),
                face.box,
                face.score,
            )
            for entry, face in named
        ]
        timed("crop", started)
        return _Found(name, entries)

    def encode_pending() -> None:
        if not pending:
            return
        started = time.perf_counter()
        latents = pipeline.encode([item[1] for item in pending], batch_size=batch_size)
        timed("encode", started)
        for (name, _, jpeg, box, score, source), latent in zip(pending, latents, strict=True):
            rows["descriptors"].append(latent)
            rows["names"].append(name)
            rows["sources"].append(source)
            rows["boxes"].append(box if box is not None else (np.nan,) * 4)
            rows["scores"].append(score)
            rows["thumbnails"].append(jpeg)
        pending.clear()

    def save_chunk() -> None:
        encode_pending()
        if store is not None and (chunk_photos or rows["names"]):
            store.save(rows, list(chunk_photos), list(chunk_unreadable), list(chunk_no_face))
            with np.errstate(all="ignore"):
                chunks.append(_rows_as_chunk(rows))
            for values in rows.values():
                values.clear()
        chunk_photos.clear()
        chunk_unreadable.clear()
        chunk_no_face.clear()

    interrupted = False
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="index") as pool:
        in_flight: list[Future[_Found]] = []
        iterator: Iterator[Path] = iter(todo)
        try:
            for path in iterator:
                in_flight.append(pool.submit(find, path))
                if len(in_flight) < 2 * workers:
                    continue
                _take(in_flight.pop(0).result(), pending, report, chunk_photos, chunk_unreadable, chunk_no_face, state)
                if len(pending) >= batch_size:
                    encode_pending()
                if len(chunk_photos) >= CHUNK_PHOTOS:
                    save_chunk()
                if progress is not None:
                    progress(state)
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
            for future in in_flight:
                _take(future.result(), pending, report, chunk_photos, chunk_unreadable, chunk_no_face, state)
                if len(pending) >= batch_size:
                    encode_pending()
                if progress is not None:
                    progress(state)
            in_flight.clear()
        except KeyboardInterrupt:
            interrupted = True
            for future in in_flight:
                future.cancel()
            for future in in_flight:  # those already running finish; what they found is kept too
                if not future.cancelled():
                    _take(future.result(), pending, report, chunk_photos, chunk_unreadable, chunk_no_face, state)
    save_chunk() if store is not None else encode_pending()
    if interrupted:
        if store is None:
            raise Interrupted(state.done, state.total, Path())
        raise Interrupted(state.done, state.total, store.folder)
    position = {path.relative_to(gallery_dir).as_posix(): index for index, path in enumerate(photos)}
    faces, thumbnails = _assemble(chunks, rows, encoder, position)
    report.indexed = list(faces.names)
    report.seconds = state.elapsed
    report.steps = dict(state.seconds)
    if not len(faces):
        raise EmptyGallery(
            f"no photo in {gallery_dir} could be indexed ({len(photos)} photos: "
            f"{len(report.unreadable)} unreadable, {len(report.no_face)} without a face; "
            f"{len(others)} other files skipped)"
        )
    if store is not None:
        store.discard()
    return FolderFaces(faces, thumbnails, report)


def _take(
    found: _Found,
    pending: list,
    report: IndexReport,
    photos: list[str],
    unreadable: list[tuple[str, str]],
    no_face: list[str],
    state: Progress,
) -> None:
    photos.append(found.photo)
    state.done += 1
    if found.unreadable is not None:
        report.unreadable.append((found.photo, found.unreadable))
        unreadable.append((found.photo, found.unreadable))
    elif found.no_face:
        report.no_face.append(found.photo)
        no_face.append(found.photo)
    for name, crop, jpeg, box, score in found.entries:
        pending.append((name, crop, jpeg, box, score, found.photo))
        state.faces += 1


def _rows_as_chunk(rows: dict[str, list]) -> dict:
    """Rows in memory, in the form a saved chunk is read back in."""
    chunk: dict = {
        "descriptors": np.asarray(rows["descriptors"], np.float32),
        "boxes": np.asarray(rows["boxes"], np.float32).reshape(-1, 4),
        "scores": np.asarray(rows["scores"], np.float32),
    }
    for column in ("names", "sources"):
        chunk[f"{column}_utf8"], chunk[f"{column}_offsets"] = text_column(rows[column])
    blobs = rows["thumbnails"]
    chunk["thumbnails_utf8"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    chunk["thumbnails_offsets"] = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return chunk


def _assemble(
    chunks: list[dict], rows: dict[str, list], encoder: str, position: dict[str, int]
) -> tuple[Faces, dict[str, bytes]]:
    """Every chunk (saved or in memory) as one set of faces, in the folder's photo order (a photo's faces in the
    order they were named), and their thumbnails by name."""
    if rows["names"]:
        chunks = [*chunks, _rows_as_chunk(rows)]
    names: list[str] = []
    sources: list[str] = []
    descriptors, boxes, scores = [], [], []
    thumbnails: dict[str, bytes] = {}
    for chunk in chunks:
        chunk_names = read_text_column(chunk["names_utf8"], chunk["names_offsets"])
        names += chunk_names
        sources += read_text_column(chunk["sources_utf8"], chunk["sources_offsets"])
        if len(chunk_names):
            descriptors.append(chunk["descriptors"])
            boxes.append(chunk["boxes"])
            scores.append(chunk["scores"])
        blob, offsets = chunk["thumbnails_utf8"].tobytes(), chunk["thumbnails_offsets"].tolist()
        for name, start, end in zip(chunk_names, offsets[:-1], offsets[1:], strict=True):
            thumbnails[name] = blob[start:end]
    if not names:
        return Faces.empty((0,)), {}
    order = sorted(range(len(names)), key=lambda i: position.get(sources[i], -1))  # stable: a photo's faces in order
    faces = Faces.new(
        np.concatenate(descriptors),
        names,
        encoder=encoder,
        sources=sources,
        boxes=np.concatenate(boxes),
        scores=np.concatenate(scores),
    ).take(order)
    return faces, thumbnails
