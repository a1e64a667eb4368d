"""The bad-input catalogue (issue #7): each case sent to the JSON API and to the page, on both backends.

Every case names the answer it must get: a status and a fragment of the message (so a wrong
error with the right status still fails), or, for unusual but valid photos, a found face.
After the catalogue the server must still be healthy, and nothing may have been written
outside the test's own folders: the repository, the working directory, the temporary
directory and the serving directory are compared before and after, by name and mtime.
A trickled ("slow POST") upload against a real gunicorn must be cut off in bounded time.
"""

from __future__ import annotations

import functools
import io
import json
import os
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from flask import Flask
from PIL import Image
from werkzeug.test import TestResponse

from app.config import PROJECT_ROOT, Settings
from tests.support.gateway import demo_serving_dir
from tests.support.live_server import LiveServer, live_gateway

pytestmark = pytest.mark.slow

API = "/api/v1/search"
PAGE = "/detect_face/image"
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
# The default GATEWAY_MAX_UPLOAD_BYTES, which the demo app runs with.
MAX_UPLOAD = Settings.model_fields["max_upload_bytes"].default
MARKER = "portrait-bad-input-marker"  # in every hostile file name, so a file written under it can be found
HOSTILE_NAMES = {
    "traversal": f"../../etc/{MARKER}.jpg".encode(),
    "script": f"<script>alert(1)</script>{MARKER}.jpg".encode(),
    "long": MARKER.encode() + b"a" * 10_240 + b".jpg",
    "non-utf8": MARKER.encode() + b"-\xff\xfe\xc3(.jpg",
}

# -- the photos, built once per test process -------------------------------------------------------


def _save(image: Image.Image, image_format: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format, **options)
    return out.getvalue()


@functools.cache
def astronaut() -> Image.Image:
    return Image.fromarray(skimage.data.astronaut())


@functools.cache
def astronaut_jpeg() -> bytes:
    return _save(astronaut(), "JPEG", quality=90)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, bit_depth: int, colour_type: int, rows: Iterator[bytes]) -> bytes:
    """A PNG written by hand, for what Pillow will not write (48-bit colour, bombs); rows without filter bytes."""
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(b"\x00" + row) for row in rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _blank_png(width: int, height: int) -> bytes:
    """A black 1-bit PNG of any size that compresses to almost nothing: what a decompression bomb looks like."""
    row = bytes((width + 7) // 8)
    return _png(width, height, 1, 0, (row for _ in range(height)))


def _corrupt_chunk_crc(png: bytes, kind: bytes) -> bytes:
    start = png.index(kind) - 4
    (length,) = struct.unpack_from(">I", png, start)
    crc_at = start + 8 + length
    return png[:crc_at] + bytes([png[crc_at] ^ 0xFF]) + png[crc_at + 1 :]


@functools.cache
def astronaut_png() -> bytes:
    return _save(astronaut(), "PNG")


def png_bad_data_crc() -> bytes:
    return _corrupt_chunk_crc(astronaut_png(), b"IDAT")


def png_bad_header_crc() -> bytes:
    return _corrupt_chunk_crc(astronaut_png(), b"IHDR")


def zero_pixel_png() -> bytes:
    return _png(0, 0, 8, 2, iter(()))


def one_pixel_png() -> bytes:
    return _save(Image.new("RGB", (1, 1), (200, 150, 120)), "PNG")


@functools.cache
def bomb_png() -> bytes:
    return _blank_png(20_000, 20_000)


def over_max_pixels_png() -> bytes:
    return _blank_png(8_000, 7_000)  # 56 MP: over the gateway's 50 MP, under Pillow's own bomb guard


def truncated_jpeg() -> bytes:
    return astronaut_jpeg()[: len(astronaut_jpeg()) // 2]


def animated_gif() -> bytes:
    frames = [astronaut().resize((64, 64)), astronaut().resize((64, 64)).rotate(90)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def tiff() -> bytes:
    return _save(astronaut(), "TIFF")


def cmyk_jpeg() -> bytes:
    return _save(astronaut().convert("CMYK"), "JPEG", quality=90)


def grey_jpeg() -> bytes:
    return _save(astronaut().convert("L"), "JPEG", quality=90)


def grey16_png() -> bytes:
    grey = np.asarray(astronaut().convert("L")).astype(np.uint16) * 257
    return _save(Image.fromarray(grey), "PNG")


def rgb48_png() -> bytes:
    pixels = (np.asarray(astronaut()).astype(np.uint16) * 257).astype(">u2")
    return _png(pixels.shape[1], pixels.shape[0], 16, 2, (row.tobytes() for row in pixels))


def rgba_png() -> bytes:
    """Alpha that fades from opaque on the left to almost transparent on the right (the face stays over 50 %)."""
    alpha = np.tile(np.linspace(255, 20, 512).astype(np.uint8), (512, 1))
    return _save(Image.fromarray(np.dstack([np.asarray(astronaut()), alpha])), "PNG")


def palette_png() -> bytes:
    return _save(astronaut().convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0)


# An upright portrait (400 wide, 512 tall), stored turned on its side with EXIF orientation 6
# ("rotate 90 degrees clockwise to show"), as phone cameras write it.
PORTRAIT_SIZE = (400, 512)


def upright_portrait() -> Image.Image:
    return astronaut().crop((56, 0, 456, 512))


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright_portrait().transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    return _save(stored, "JPEG", quality=90, exif=exif.tobytes())


def coffee_jpeg() -> bytes:
    return _save(Image.fromarray(skimage.data.coffee()), "JPEG", quality=90)


TEXT = b"just some notes, not a photo\n" * 10
HTML = b"<!DOCTYPE html><html><head><title>x</title></head><body><script>alert(1)</script></body></html>"
SVG = b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'><circle r='9'/></svg>"

# -- how a case is sent ----------------------------------------------------------------------------

BOUNDARY = "bad-input-catalogue-boundary"


@dataclass(frozen=True)
class Part:
    """One multipart part: a file when ``filename`` is given (bytes: whatever a client may put there)."""

    name: bytes
    content: bytes
    filename: bytes | None = b"photo.jpg"
    content_type: bytes = b"image/jpeg"

    def encode(self) -> bytes:
        disposition = b'form-data; name="' + self.name + b'"'
        if self.filename is not None:
            disposition += b'; filename="' + self.filename + b'"'
        head = b"Content-Disposition: " + disposition + b"\r\nContent-Type: " + self.content_type + b"\r\n\r\n"
        return b"--" + BOUNDARY.encode() + b"\r\n" + head + self.content + b"\r\n"


Body = tuple[bytes, str | None]  # the request body and its Content-Type (None: no header)
Send = Callable[[], Body]


def multipart(*parts: Callable[[], Part]) -> Send:
    def build() -> Body:
        body = b"".join(part().encode() for part in parts) + b"--" + BOUNDARY.encode() + b"--\r\n"
        return body, f"multipart/form-data; boundary={BOUNDARY}"

    return build


def photo(content: Callable[[], bytes] | bytes, filename: bytes = b"photo.jpg", **part: bytes) -> Send:
    """A multipart body with one file in the ``image_file`` field."""
    return multipart(lambda: Part(b"image_file", content() if callable(content) else content, filename, **part))


def raw(content: Callable[[], bytes] | bytes, content_type: str | None) -> Send:
    return lambda: (content() if callable(content) else content, content_type)


@dataclass(frozen=True)
class Expect:
    """The answer a case must get: a status and a fragment of the error message (case-insensitive).

    A 200 means a face was found: the catalogue has no valid photo without one (that one is a 422).
    """

    status: int
    message: str = ""


@dataclass(frozen=True)
class Case:
    id: str
    send: Send
    expect: Expect
    query: str = ""
    page: Expect | None = None  # the page's answer where it differs from the API's (it takes multipart only)
    size: tuple[int, int] | None = None  # for a 200: the photo's (width, height), upright


EMPTY = "the photo is empty"
NOT_AN_IMAGE = "not a readable image"
BAD_K = "k must be a whole number from 1 to 100"
ONLY_MULTIPART = Expect(415, "send multipart/form-data with a 'image_file' field; got image/")
FACE = Expect(200)
LONG_FIELD = b"f" * 5_000

CASES = [
    # -- the request's shape
    Case("empty-body", raw(b"", None), Expect(415, "got no content type")),
    Case("missing-field", multipart(lambda: Part(b"k", b"3", filename=None)), Expect(400, "file fields sent: none")),
    Case(
        "wrong-field-name", multipart(lambda: Part(b"photo", astronaut_jpeg())), Expect(400, "file fields sent: photo")
    ),
    Case(
        "long-wrong-field-name",
        multipart(lambda: Part(LONG_FIELD, astronaut_jpeg())),
        Expect(400, "file fields sent: fffff"),
    ),
    Case(
        "two-files",
        multipart(lambda: Part(b"image_file", astronaut_jpeg()), lambda: Part(b"image_file", astronaut_jpeg())),
        Expect(400, "send one photo in 'image_file', not 2"),
    ),
    Case("empty-file", photo(b""), Expect(400, EMPTY)),
    Case("json-body", raw(b'{"image_file": "photo.jpg"}', "application/json"), Expect(415, "got application/json")),
    Case(
        "urlencoded-form",
        raw(b"image_file=photo.jpg", "application/x-www-form-urlencoded"),
        Expect(415, "got application/x-www-form-urlencoded"),
    ),
    Case(
        "wrong-boundary",
        lambda: (photo(astronaut_jpeg)()[0], "multipart/form-data; boundary=not-the-one-used"),
        Expect(400, "the multipart body could not be read"),
    ),
    Case("over-size-limit", photo(bytes(MAX_UPLOAD + 1)), Expect(413, f"larger than {MAX_UPLOAD:,} bytes")),
    # -- what is in the file
    Case("text-named-jpg", photo(TEXT), Expect(415, NOT_AN_IMAGE)),
    Case("html-as-jpeg", photo(HTML, b"photo.jpg"), Expect(415, NOT_AN_IMAGE)),
    Case("svg-as-png", photo(SVG, b"photo.png", content_type=b"image/png"), Expect(415, NOT_AN_IMAGE)),
    Case("truncated-jpeg", photo(truncated_jpeg), Expect(400, "could not be decoded: image file is truncated")),
    Case("png-bad-data-crc", photo(png_bad_data_crc, b"p.png"), Expect(400, "bad checksum in its 'IDAT' chunk")),
    Case("png-bad-header-crc", photo(png_bad_header_crc, b"p.png"), Expect(400, "bad checksum in its 'IHDR' chunk")),
    Case("zero-pixel-png", photo(zero_pixel_png, b"p.png"), Expect(400, "the image has no pixels")),
    Case("one-pixel-png", photo(one_pixel_png, b"p.png"), Expect(422, "no face found")),
    Case("png-bomb-20000x20000", photo(bomb_png, b"p.png"), Expect(413, "too large to decode safely")),
    Case("png-over-max-pixels", photo(over_max_pixels_png, b"p.png"), Expect(413, "the limit is 50 megapixels")),
    Case("animated-gif", photo(animated_gif, b"a.gif"), Expect(415, "GIF images are not accepted")),
    Case("tiff", photo(tiff, b"a.tif"), Expect(415, "TIFF images are not accepted")),
    Case("no-face", photo(coffee_jpeg), Expect(422, "no face found with a score of at least 0.7")),
    # -- unusual but valid photos: the face must be found
    Case("cmyk-jpeg", photo(cmyk_jpeg), FACE, size=(512, 512)),
    Case("greyscale-jpeg", photo(grey_jpeg), FACE, size=(512, 512)),
    Case("16-bit-grey-png", photo(grey16_png, b"p.png"), FACE, size=(512, 512)),
    Case("16-bit-rgb-png", photo(rgb48_png, b"p.png"), FACE, size=(512, 512)),
    Case("png-with-alpha", photo(rgba_png, b"p.png"), FACE, size=(512, 512)),
    Case("palette-png-with-transparency", photo(palette_png, b"p.png"), FACE, size=(512, 512)),
    Case("exif-rotated-portrait", photo(exif_rotated_jpeg), FACE, size=PORTRAIT_SIZE),
    # -- the query
    *(
        Case(f"k={k}", photo(astronaut_jpeg), Expect(400, BAD_K), query=f"?k={k}")
        for k in ("0", "-1", "101", "abc", "1e9")
    ),
    Case("k=empty", photo(astronaut_jpeg), Expect(400, BAD_K), query="?k="),
    Case("unknown-label", photo(astronaut_jpeg), Expect(404, "version label: nope"), query="?label=nope"),
    Case(
        "malformed-label",
        photo(astronaut_jpeg),
        Expect(400, "label must be 1-64 of the characters"),
        query="?label=%3Cb%3E",
    ),
    Case("unknown-version", photo(astronaut_jpeg), Expect(404, "servable not found for request"), query="?version=999"),
    Case(
        "non-numeric-version",
        photo(astronaut_jpeg),
        Expect(400, "version must be a whole number from 1"),
        query="?version=v1",
    ),
    Case(
        "version-0",
        photo(astronaut_jpeg),
        Expect(400, "version must be a whole number from 1 to 999999999999999999, got '0'"),
        query="?version=0",
    ),
    Case(
        "unknown-stage-pin",
        photo(astronaut_jpeg),
        Expect(400, "unknown parameter 'paint_version'"),
        query="?paint_version=1",
    ),
    # -- hostile file names: never a path, never echoed raw
    Case("filename-traversal", photo(astronaut_jpeg, HOSTILE_NAMES["traversal"]), FACE),
    Case("filename-script", photo(astronaut_jpeg, HOSTILE_NAMES["script"]), FACE),
    Case("filename-10kb", photo(astronaut_jpeg, HOSTILE_NAMES["long"]), FACE),
    Case("filename-traversal-text", photo(TEXT, HOSTILE_NAMES["traversal"]), Expect(415, NOT_AN_IMAGE)),
    Case("filename-script-text", photo(TEXT, HOSTILE_NAMES["script"]), Expect(415, NOT_AN_IMAGE)),
    Case("filename-10kb-text", photo(TEXT, HOSTILE_NAMES["long"]), Expect(415, NOT_AN_IMAGE)),
    Case("filename-non-utf8", photo(astronaut_jpeg, HOSTILE_NAMES["non-utf8"]), Expect(400, "are UTF-8")),
    # -- raw bodies: the API takes them, the page does not
    Case("raw-jpeg", raw(astronaut_jpeg, "image/jpeg"), FACE, page=ONLY_MULTIPART, size=(512, 512)),
    Case("raw-text-as-jpeg", raw(TEXT, "image/jpeg"), Expect(415, NOT_AN_IMAGE), page=ONLY_MULTIPART),
    Case("raw-empty-jpeg", raw(b"", "image/jpeg"), Expect(400, EMPTY), page=ONLY_MULTIPART),
    Case("raw-svg", raw(SVG, "image/svg+xml"), Expect(415, NOT_AN_IMAGE), page=ONLY_MULTIPART),
    Case("raw-text-plain", raw(TEXT, "text/plain"), Expect(415, "got text/plain")),
    Case(
        "raw-over-size-limit", raw(bytes(MAX_UPLOAD + 1), "image/png"), Expect(413, "larger than"), page=ONLY_MULTIPART
    ),
]


# -- checking the answers ----------------------------------------------------------------------------


class AlertText(HTMLParser):
    """The text of the page's role="alert" element: where the error page puts the message."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.depth = 0
        self.parts: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.depth or dict(attrs).get("role") == "alert":
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        self.depth = max(0, self.depth - 1)

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return " ".join("".join(self.parts).split())


def send(client, case: Case, endpoint: str) -> TestResponse:
    body, content_type = case.send()
    headers = dict(BROWSER) if endpoint == PAGE else {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(endpoint + case.query, data=body, headers=headers)


def assert_nothing_hostile(text: str) -> None:
    assert "<script>alert" not in text
    assert "a" * 200 not in text, "the 10 KB file name is echoed"
    assert MARKER not in text, "a client's file name is echoed"
    assert "Traceback" not in text and 'File "' not in text


def check_api(response: TestResponse, case: Case) -> None:
    expect = case.expect
    text = response.get_data(as_text=True)
    assert response.status_code == expect.status, text[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    if expect.status == 200:
        assert body["face"]["score"] >= 0.7 and len(body["matches"]) == 5
        if case.size is not None:
            assert (body["image"]["width"], body["image"]["height"]) == case.size
    else:
        error = body["error"]
        assert set(error) == {"code", "message"}
        assert expect.message.lower() in error["message"].lower(), error
        assert len(error["message"]) < 400, "a message must stay short whatever the client sent"
    assert_nothing_hostile(text)


def check_page(response: TestResponse, case: Case) -> None:
    expect = case.page or case.expect
    page = response.get_data(as_text=True)
    assert response.status_code == expect.status, page[:500]
    assert response.mimetype == "text/html"
    if expect.status == 200:
        assert "data-face-box" in page and "data-crop" in page and "data-anime" in page
        if case.size is not None:
            assert f"{case.size[0]}×{case.size[1]} photo" in page
    else:
        alert = AlertText(page).text
        assert expect.message.lower() in alert.lower(), alert
        assert len(alert) < 400
        assert f"Error {expect.status}" in page
    assert_nothing_hostile(page)


# -- the file system before and after ----------------------------------------------------------------

# Never ours to watch: version control, the virtualenv, caches Python and the tools write as they please.
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis", "test-artifacts"}


def snapshot(root: Path) -> dict[str, int]:
    """Every file and folder under ``root``: path -> mtime in ns."""
    found: dict[str, int] = {}
    for folder, folders, files in os.walk(root):
        folders[:] = [name for name in folders if name not in SKIPPED_DIRS]
        for name in (*folders, *files):
            path = Path(folder, name)
            try:
                found[str(path)] = path.lstat().st_mtime_ns
            except FileNotFoundError:  # gone between the listing and the look
                continue
    return found


def marked_names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir() if MARKER in path.name}


def changes(before: dict[str, int], after: dict[str, int], *, mtimes: bool = True) -> list[str]:
    found = [f"new {path}" for path in after.keys() - before.keys()]
    found += [f"gone {path}" for path in before.keys() - after.keys()]
    if mtimes:
        found += [f"changed {path}" for path in before.keys() & after.keys() if before[path] != after[path]]
    return sorted(found)


@dataclass
class Watch:
    """The folders a gateway must not write to, as they were before the catalogue.

    ``own`` folders (the serving folder, the private temporary one) are compared by name and
    mtime. In ``shared`` ones (the working tree) people and tools edit files while tests run,
    so there only a new or a vanished entry counts: no case names an existing file, so the
    gateway could not overwrite one without also being wrong in a way that shows.
    """

    own: list[Path]
    shared: list[Path]
    before: dict[Path, dict[str, int]]
    system_temp: Path
    system_temp_names: set[str]

    def written(self) -> list[str]:
        found = [change for root in self.own for change in changes(self.before[root], snapshot(root))]
        found += [change for root in self.shared for change in changes(self.before[root], snapshot(root), mtimes=False)]
        # The machine's own temporary folder is shared with every other process: only a new entry
        # carrying an uploaded file's name can be ours.
        new = marked_names(self.system_temp) - self.system_temp_names
        return found + [f"new {self.system_temp / name}" for name in sorted(new)]


@pytest.fixture(scope="module")
def watch(demo_app: Flask, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watch]:
    """The catalogue's view of the disk; this process's temporary folder is a private, empty one meanwhile.

    Whatever the gateway writes through ``tempfile`` (spooled uploads, temporary images) lands in
    that private folder and shows; the machine's /tmp is busy with other processes.
    """
    private_temp = tmp_path_factory.mktemp("gateway-temp")
    system_temp = Path(tempfile.gettempdir())
    serving_dir = Path(demo_app.config["GATEWAY_SETTINGS"].model_config_file).parent
    own = [serving_dir, private_temp]
    shared = [PROJECT_ROOT] if Path.cwd().is_relative_to(PROJECT_ROOT) else [PROJECT_ROOT, Path.cwd()]
    saved = tempfile.tempdir
    tempfile.tempdir = str(private_temp)
    try:
        yield Watch(
            own=own,
            shared=shared,
            before={root: snapshot(root) for root in own + shared},
            system_temp=system_temp,
            system_temp_names=marked_names(system_temp),
        )
    finally:
        tempfile.tempdir = saved


# -- the catalogue ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(demo_app: Flask, watch: Watch):
    return demo_app.test_client()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_api(client, case: Case) -> None:
    check_api(send(client, case, API), case)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_page(client, case: Case) -> None:
    check_page(send(client, case, PAGE), case)


def test_exif_rotated_portrait_face_is_where_the_upright_one_is(client) -> None:
    upright = _save(upright_portrait(), "JPEG", quality=90)
    boxes = []
    for data in (upright, exif_rotated_jpeg()):
        response = client.post(API, data=data, content_type="image/jpeg")
        assert response.status_code == 200, response.get_json()
        assert (response.json["image"]["width"], response.json["image"]["height"]) == PORTRAIT_SIZE
        boxes.append(response.json["face"]["box"])
    for side in ("ymin", "xmin", "ymax", "xmax"):
        assert boxes[0][side] == pytest.approx(boxes[1][side], abs=0.03), boxes


def test_hostile_file_names_land_nowhere(watch: Watch) -> None:
    """The names the catalogue sent, resolved against every folder a careless gateway might use, name no file."""
    bases = (Path.cwd(), PROJECT_ROOT, PROJECT_ROOT / "static", Path(tempfile.gettempdir()), watch.system_temp)
    for name in HOSTILE_NAMES.values():
        text = name.decode("utf-8", "replace")
        for base in bases:
            try:
                written = (base / text).resolve().exists()
            except (OSError, ValueError):  # a name too long, or with a NUL: no file can have it
                written = False
            assert not written, f"{name[:60]!r} was written under {base}"


def test_after_the_catalogue_the_server_is_healthy_and_wrote_nothing(client, watch: Watch) -> None:
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    good = Case("good", photo(astronaut_jpeg), FACE, size=(512, 512))
    check_api(send(client, good, API), good)
    check_page(send(client, good, PAGE), good)
    assert watch.written() == []


# -- slow clients against a real gunicorn ----------------------------------------------------------------

BODY_DEADLINE_S = 3.0


@dataclass
class Trickle:
    """A raw connection that sends a request's head, then its body one byte every ``interval`` seconds."""

    address: tuple[str, int]
    head: bytes
    interval: float = 0.1
    send_body: bool = True
    give_up_after: float = 20.0
    answer: bytes = b""
    outcome: str = "still open"
    seconds: float = 0.0
    #: Set once the head (and the first byte of the body, if any) has been sent: the server has it to read.
    sending: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        started = time.monotonic()
        with socket.create_connection(self.address, timeout=5) as conn:
            conn.sendall(self.head)
            conn.settimeout(self.interval)
            while time.monotonic() - started < self.give_up_after:
                try:
                    if self.send_body:
                        conn.sendall(b"\xff")
                    self.sending.set()
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError as exc:  # reset or broken pipe: the server cut it
                    self.outcome = f"cut ({exc.__class__.__name__})"
                    break
                if not chunk:
                    self.outcome = "closed"
                    break
                self.answer += chunk
                if b"\r\n\r\n" in self.answer:
                    self.seconds = time.monotonic() - started
                    self.outcome = "answered"
                    self._read_rest(conn)
                    return
            self.seconds = time.monotonic() - started

    def _read_rest(self, conn: socket.socket) -> None:
        head, _, body = self.answer.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        conn.settimeout(5)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            body += chunk
        self.answer = head + b"\r\n\r\n" + body

    @property
    def status(self) -> int | None:
        line = self.answer.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 and line[1].isdigit() else None


def _head(path: str, content_type: str, length: int, accept: str = "*/*") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("live-gateway")
    config = demo_serving_dir(folder, demo_root)
    # No warmup: it only makes the first request faster, and this server's start counts against the test.
    env = {"GATEWAY_THREADS": "4", "GATEWAY_UPLOAD_TIMEOUT": str(BODY_DEADLINE_S), "GATEWAY_WARMUP": "0"}
    with live_gateway(config, folder, env=env) as server:
        yield server


def test_trickled_uploads_are_cut_off_and_others_are_served(live: LiveServer) -> None:
    """Three slow clients (two trickling a body, one sending none) hold three of the four threads; the
    fourth still serves others promptly, and the slow ones are answered 408 once the body deadline passes."""
    multipart_type = f"multipart/form-data; boundary={BOUNDARY}"
    trickles = [
        Trickle(live.address, _head(API, "image/jpeg", 100_000)),
        Trickle(live.address, _head(PAGE, multipart_type, 100_000, accept=BROWSER["Accept"])),
        Trickle(live.address, _head(API, "image/jpeg", 100_000), send_body=False),
    ]
    threads = [threading.Thread(target=trickle.run) for trickle in trickles]
    for thread in threads:
        thread.start()
    try:
        for trickle in trickles:  # the slow clients are in
            assert trickle.sending.wait(10), (trickle.outcome, "a slow client never got its request out")
        started = time.monotonic()
        assert live.get("/healthz", timeout=5)[0] == 200
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        status, body = live.request("POST", API, astronaut_jpeg(), {"Content-Type": "image/jpeg"}, timeout=10)
        assert status == 200, body[:300]
        assert json.loads(body)["face"]["score"] >= 0.7
        # Generous for a busy machine, and still far from what a blocked server would take (the slow clients
        # would hold their threads for give_up_after seconds).
        assert time.monotonic() - started < 8.0
    finally:
        for thread in threads:
            thread.join(timeout=30)
    for trickle in trickles:
        assert trickle.outcome == "answered", (trickle.outcome, trickle.answer[:300], live.log_tail())
        assert trickle.status == 408, trickle.answer[:300]
        # Cut at the deadline, with slack for a busy machine; without it they would run to give_up_after.
        assert BODY_DEADLINE_S <= trickle.seconds < BODY_DEADLINE_S + 8, trickle.seconds
    assert b"the request body did not arrive within 3 seconds" in trickles[0].answer
    assert b'role="alert"' in trickles[1].answer and b"did not arrive within" in trickles[1].answer
    assert live.get("/healthz")[0] == 200
    assert "Traceback" not in live.log_tail(20_000)
