"""The browser pages through Flask's test client, on both backends: upload form, result page, JSON, error pages."""

from __future__ import annotations

import base64
import builtins
import io
import os
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from flask import Flask, render_template
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.datastructures import FileStorage
from werkzeug.test import TestResponse, encode_multipart

from app.config import PROJECT_ROOT
from app.pipeline import Face, Match, Photo, PortraitResult
from app.views.pages import result_context, upload_form_context
from tests.support import stack_checks

HOSTILE = "<script>alert(1)</script>"


class Tags(HTMLParser):
    """Every start tag of a page as (tag, attributes), and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k.rstrip("_")) == v for k, v in attrs.items())]

    def plain_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return jpeg(skimage.data.astronaut())


def upload(
    client: FlaskClient,
    data: bytes,
    filename: str = "photo.jpg",
    *,
    query: str = "",
    headers: dict[str, str] | None = None,
    **form: object,
) -> TestResponse:
    form["image_file"] = (io.BytesIO(data), filename)
    return client.post(f"/detect_face/image{query}", data=form, headers=headers or {})


def assert_csp_clean(page: str) -> None:
    """No inline script, inline style or event-handler attribute: the page must work under a strict CSP."""
    tags = Tags(page)
    for tag, attrs in tags.tags:
        assert "style" not in attrs, f"inline style on <{tag}>"
        assert not [name for name in attrs if name.startswith("on")], f"event handler attribute on <{tag}>"
        if tag == "script":
            assert attrs.get("src"), "inline <script>"
    assert not tags.find("style")


def assert_upload_form(page: str) -> None:
    tags = Tags(page)
    forms = tags.find("form", action="/detect_face/image")
    assert len(forms) == 1
    assert forms[0]["method"] == "post"
    assert forms[0]["enctype"] == "multipart/form-data"
    (field,) = tags.find("input", name="image_file")
    assert field["type"] == "file"
    assert field["accept"] == "image/jpeg,image/png,image/webp,image/bmp"


# -- the upload page ---------------------------------------------------------------------------------


def test_index_has_the_upload_form(demo_app: Flask) -> None:
    response = demo_app.test_client().get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert_upload_form(page)
    assert_csp_clean(page)
    tags = Tags(page)
    assert tags.find("script", src="/static/app.js")
    assert tags.find("link", rel="stylesheet", href="/static/style.css")
    assert all(attrs.get("alt") is not None for attrs in tags.find("img"))


@pytest.mark.parametrize("name", ["app.js", "style.css", "favicon.svg"])
def test_static_files_are_served(demo_app: Flask, name: str) -> None:
    response = demo_app.test_client().get(f"/static/{name}")
    assert response.status_code == 200
    response.close()


# -- the result page ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result_page(demo_app: Flask, astronaut_jpeg: bytes) -> tuple[TestResponse, str]:
    response = upload(demo_app.test_client(), astronaut_jpeg, "astronaut.jpg", query="?k=4")
    return response, response.get_data(as_text=True)


def test_result_page_shows_face_box_matches_anime_and_crop(result_page: tuple[TestResponse, str]) -> None:
    response, page = result_page
    assert response.status_code == 200, page
    assert response.mimetype == "text/html"
    tags = Tags(page)
    (box,) = tags.find("rect", class_="face-box")
    x, y, width, height = (float(box[name].rstrip("%")) for name in ("x", "y", "width", "height"))
    assert 0 <= x < x + width <= 100 and 0 <= y < y + height <= 100
    assert 30 < x + width / 2 < 60 and 10 < y + height / 2 < 40  # the astronaut's face, upper middle
    assert [tag for tag, _ in tags.tags].count("svg") >= 1
    photo = [a for a in tags.find("img") if (a.get("alt") or "").startswith("The uploaded photo")]
    assert len(photo) == 1 and photo[0]["src"].startswith("data:image/jpeg;base64,")
    thumbnails = [a for a in tags.find("img") if (a.get("src") or "").startswith("/api/v1/gallery/")]
    assert len(thumbnails) == 4
    assert all("version=" in a["src"] for a in thumbnails)
    assert next(a["src"] for a in tags.find("img") if "data-anime" in a).startswith("data:image/png;base64,")
    assert next(a["src"] for a in tags.find("img") if "data-crop" in a).startswith("data:image/jpeg;base64,")
    text = tags.plain_text()
    assert "distance" in text and "translate" in text and "total" in text
    # The compose smoke test's check of a live stack looks for these.
    assert [marker for marker in stack_checks.RESULT_PAGE_MARKERS if marker.decode() not in page] == []
    assert_upload_form(page)
    assert_csp_clean(page)


def test_result_page_thumbnails_resolve(demo_app: Flask, result_page: tuple[TestResponse, str]) -> None:
    client = demo_app.test_client()
    for attrs in Tags(result_page[1]).find("img"):
        if (attrs.get("src") or "").startswith("/api/v1/gallery/"):
            response = client.get(attrs["src"])
            assert response.status_code == 200
            assert response.mimetype.startswith("image/")
            response.close()


def test_result_photo_is_downscaled(demo_app: Flask) -> None:
    big = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1600, 1600)))
    page = upload(demo_app.test_client(), jpeg(big)).get_data(as_text=True)
    (photo,) = [a for a in Tags(page).find("img") if (a.get("alt") or "").startswith("The uploaded photo")]
    assert (photo["width"], photo["height"]) == ("800", "800")
    with Image.open(io.BytesIO(base64.b64decode(photo["src"].split(",", 1)[1]))) as shown:
        assert shown.size == (800, 800)


def test_result_sets_server_timing(result_page: tuple[TestResponse, str]) -> None:
    timing = result_page[0].headers["Server-Timing"]
    stages = {part.split(";")[0].strip() for part in timing.split(",")}
    assert {"decode", "detect", "encode", "search", "translate", "total"} <= stages


def test_k_from_the_form(demo_app: Flask, astronaut_jpeg: bytes) -> None:
    page = upload(demo_app.test_client(), astronaut_jpeg, k="2").get_data(as_text=True)
    thumbnails = [a for a in Tags(page).find("img") if (a.get("src") or "").startswith("/api/v1/gallery/")]
    assert len(thumbnails) == 2
    assert Tags(page).find("input", name="k")[0]["value"] == "2"  # the retry form keeps the choice


def test_json_when_the_client_asks_for_it(demo_app: Flask, astronaut_jpeg: bytes) -> None:
    response = upload(demo_app.test_client(), astronaut_jpeg, query="?k=3", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert "Server-Timing" in response.headers
    body = response.get_json()
    assert set(body["face"]["box"]) == {"ymin", "xmin", "ymax", "xmax"}
    assert len(body["matches"]) == 3
    with Image.open(io.BytesIO(base64.b64decode(body["anime_png_base64"]))) as anime:
        assert anime.format == "PNG" and anime.size == (256, 256)


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "status", "message"),
    [
        ("text", 415, "not a readable image"),
        ("coffee", 422, "no face found"),
        ("no_field", 400, "image_file"),
        ("not_multipart", 415, "multipart/form-data"),
        ("bad_k", 400, "k must be"),
        ("unknown_label", 404, "label"),
    ],
)
def test_errors_are_readable_pages_with_the_form(demo_app: Flask, what: str, status: int, message: str) -> None:
    client = demo_app.test_client()
    if what == "text":
        response = upload(client, b"just some text, not a photo\n", "notes.txt")
    elif what == "coffee":
        response = upload(client, jpeg(skimage.data.coffee()), "coffee.jpg")
    elif what == "no_field":
        response = client.post("/detect_face/image", data={"photo": (io.BytesIO(b"x"), "a.jpg")})
    elif what == "not_multipart":
        response = client.post("/detect_face/image", data={"k": "3"})
    elif what == "bad_k":
        response = upload(client, b"irrelevant", k="many")
    else:
        response = upload(client, jpeg(skimage.data.astronaut()), query="?label=nonexistent")
    page = response.get_data(as_text=True)
    assert response.status_code == status, page
    assert response.mimetype == "text/html"
    tags = Tags(page)
    alerts = [a for a in tags.find("p") if a.get("role") == "alert" and "error-message" in (a.get("class") or "")]
    assert len(alerts) == 1
    assert message.lower() in tags.plain_text().lower()
    assert f"Error {status}" in tags.plain_text()
    assert_upload_form(page)
    assert_csp_clean(page)


def test_error_as_json_for_json_clients(demo_app: Flask) -> None:
    response = upload(demo_app.test_client(), b"text", "a.txt", headers={"Accept": "application/json"})
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_unknown_page_uses_the_error_layout(demo_app: Flask) -> None:
    response = demo_app.test_client().get("/no/such/page")
    assert response.status_code == 404
    assert_upload_form(response.get_data(as_text=True))


# -- hostile input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["photo", "text"])
def test_hostile_file_name_is_never_echoed_unescaped(demo_app: Flask, astronaut_jpeg: bytes, content: str) -> None:
    data = astronaut_jpeg if content == "photo" else b"not a photo"
    response = upload(demo_app.test_client(), data, f"{HOSTILE}.jpg")
    assert response.status_code == (200 if content == "photo" else 415)
    page = response.get_data(as_text=True)
    assert "<script>alert" not in page
    assert "alert(1)" not in page  # the client's file name is not shown at all


def test_hostile_parameters_are_escaped(demo_app: Flask, astronaut_jpeg: bytes) -> None:
    response = upload(demo_app.test_client(), astronaut_jpeg, k="<b>5</b>")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "<b>5" not in page
    assert "&lt;b&gt;5" in page


def test_gallery_file_names_are_escaped(demo_app: Flask) -> None:
    pixels = np.zeros((64, 48, 3), np.uint8)
    result = PortraitResult(
        photo=Photo(pixels, (48, 64)),
        face=Face((0.1, 0.2, 0.5, 0.6), 0.9),
        faces=[Face((0.1, 0.2, 0.5, 0.6), 0.9)],
        crop=pixels[:32, :32],
        matches=[Match(0, f'{HOSTILE}"onload="x.png', 0.5)],
        anime=np.zeros((256, 256, 3), np.uint8),
        versions={"search": 7},
        timings={"decode": 0.001, "total": 0.002},
    )
    with demo_app.test_request_context("/detect_face/image", method="POST"):
        page = render_template("result.html", upload_form=upload_form_context(), **result_context(result))
    assert HOSTILE not in page
    assert '"onload="' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert_csp_clean(page)


# -- nothing on disk ---------------------------------------------------------------------------------


def _listing(*folders: Path) -> set[str]:
    return {str(path) for folder in folders for path in folder.rglob("*")}


def _marked(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if "portrait-upload-marker" in path.name]


def _big_png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((1400, 1400)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    "size",
    ["small", "over_500kb"],  # werkzeug would spool a file part over 500 KB to disk
)
def test_uploads_are_never_written_to_disk(
    demo_app: Flask, astronaut_jpeg: bytes, monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    photo = astronaut_jpeg if size == "small" else _big_png()
    assert (len(photo) < 500_000) == (size == "small")
    writes: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def watched_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(flag in mode for flag in "wax+"):
            writes.append(f"open({file!r}, {mode!r})")
        return real_open(file, mode, *args, **kwargs)

    def watched_os_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(f"os.open({path!r})")
        return real_os_open(path, flags, *args, **kwargs)

    # Encoded up front: the test client itself spools large bodies to a temporary file.
    bodies = [
        encode_multipart({"image_file": FileStorage(io.BytesIO(data), f"portrait-upload-marker.{ext}")})
        for data, ext in ((photo, "jpg"), (b"text", "txt"))
    ]
    watched = (PROJECT_ROOT / "static", PROJECT_ROOT / "templates")
    before = _listing(*watched)
    client = demo_app.test_client()
    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(os, "open", watched_os_open)
    responses = [
        client.post("/detect_face/image", data=body, content_type=f"multipart/form-data; boundary={boundary}")
        for boundary, body in bodies
    ]
    monkeypatch.undo()
    assert [response.status_code for response in responses] == [200, 415]
    assert writes == []
    assert _listing(*watched) == before
    assert _marked(Path.cwd()) == []
    assert _marked(Path(tempfile.gettempdir())) == []
