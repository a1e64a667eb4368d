"""Every face of a group photo, over both backends: ``faces=all`` and ``face=<index>`` on the API and the page.

The photo is one of the npm package's group photos, the same the demo gallery is built from, so
each face's nearest gallery face is itself (``sample1.jpg#<n>``): an answer that mixed up its faces
would show it.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Callable, Iterator
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from app.modelzoo import weights

pytestmark = pytest.mark.slow

PHOTO_NUMBER = 1  # three people
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TODAYS_SEARCH_KEYS = {"arms", "face", "faces", "gallery_version", "image", "matches", "timings_ms"}


@pytest.fixture(scope="module")
def group_photo() -> bytes:
    return weights.sample_photos()[PHOTO_NUMBER - 1].read_bytes()


@pytest.fixture
def client(demo_app: Flask) -> FlaskClient:
    return demo_app.test_client()


@pytest.fixture(scope="module")
def found_faces(demo_app: Flask, group_photo: bytes) -> list[dict]:
    response = demo_app.test_client().post("/api/v1/detect", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    faces = response.json["faces"]
    assert len(faces) == 3
    return faces


@pytest.fixture(scope="module")
def every_face(demo_app: Flask, group_photo: bytes) -> dict:
    response = demo_app.test_client().post("/api/v1/search?faces=all&k=3", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    return response.json


@pytest.fixture
def calls(demo_app: Flask, monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Each model call the pipeline makes from now on, counted by (servable, signature)."""
    backend = demo_app.extensions["serving"].pipeline.backend
    counted: Counter = Counter()
    real = backend.predict_versioned

    def predict_versioned(ref, inputs, timeout=None):
        counted[(ref.name, ref.signature)] += 1
        return real(ref, inputs, timeout)

    monkeypatch.setattr(backend, "predict_versioned", predict_versioned)
    return counted


@pytest.fixture
def make_app(demo_app: Flask) -> Iterator[Callable[..., Flask]]:
    """Apps like the demo app (the same backend kind and servables; the same server for gRPC) with other settings."""
    made: list[Flask] = []

    def make(**overrides: object) -> Flask:
        settings = demo_app.config["GATEWAY_SETTINGS"].model_dump() | {"warmup": False} | overrides
        app = create_app(settings)
        app.config["TESTING"] = True
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["serving"].close()


def _top_names(results: list[dict]) -> list[str]:
    return [entry["matches"][0]["filename"] for entry in results]


def _same_matches(ours: list[dict], theirs: list[dict]) -> bool:
    """The same gallery faces in the same order, at the same distances up to float rounding (a batch of faces is
    computed by other kernels than one face alone)."""
    names = [(m["index"], m["filename"], m["thumbnail_url"]) for m in ours]
    return names == [(m["index"], m["filename"], m["thumbnail_url"]) for m in theirs] and all(
        m["distance"] == pytest.approx(n["distance"], abs=1e-4) for m, n in zip(ours, theirs, strict=True)
    )


# -- the API -----------------------------------------------------------------------------------------


def test_every_face_gets_its_matches_in_faces_order(every_face: dict, found_faces: list[dict]) -> None:
    assert set(every_face) == {"arms", "faces", "gallery_version", "image", "results", "timings_ms"}
    assert every_face["faces"] == found_faces
    assert [entry["face"] for entry in every_face["results"]] == [0, 1, 2]
    for entry in every_face["results"]:
        assert set(entry) == {"face", "matches"}
        distances = [match["distance"] for match in entry["matches"]]
        assert len(distances) == 3 and distances == sorted(distances)  # k applies to each face
    # Each face finds itself in the gallery (built from the same photo): three different faces, nearly at 0.
    tops = _top_names(every_face["results"])
    assert sorted(tops) == [f"samples/sample{PHOTO_NUMBER}.jpg#{n}" for n in (1, 2, 3)]
    assert all(entry["matches"][0]["distance"] < 0.05 for entry in every_face["results"])


def test_every_face_calls_the_encoder_and_the_search_once(
    demo_app: Flask, client: FlaskClient, group_photo: bytes, calls: Counter
) -> None:
    served_before = Counter(demo_app.double.faults.servables) if demo_app.double is not None else None
    response = client.post("/api/v1/search?faces=all", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    assert len(response.json["results"]) == 3
    model_calls = {name: count for (name, signature), count in calls.items() if signature == "serving_default"}
    assert model_calls == {"face_detection": 1, "twingan_latent_encoder": 1, "latent_search_model": 1}
    if served_before is not None:  # and the model server saw the same: one Predict per servable
        served = demo_app.double.faults.servables - served_before
        assert {name: served[name] for name in model_calls} == model_calls


def test_one_face_by_its_position(client: FlaskClient, group_photo: bytes, every_face: dict) -> None:
    response = client.post("/api/v1/search?face=2&k=3&images=1", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    (entry,) = response.json["results"]
    assert entry["face"] == 2
    assert _same_matches(entry["matches"], every_face["results"][2]["matches"])
    assert base64.b64decode(entry["crop_jpeg_base64"]).startswith(b"\xff\xd8\xff")


def test_without_the_parameters_the_answer_is_todays(client: FlaskClient, group_photo: bytes, every_face: dict) -> None:
    body = client.post("/api/v1/search?k=3", data=group_photo, content_type="image/jpeg").json
    assert set(body) == TODAYS_SEARCH_KEYS
    assert body["face"] == body["faces"][0]
    assert _same_matches(body["matches"], every_face["results"][0]["matches"])


def test_translate_every_face_answers_json_one_png_each(
    client: FlaskClient, group_photo: bytes, found_faces: list[dict], calls: Counter
) -> None:
    response = client.post("/api/v1/translate?faces=all", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 200, response.json
    assert response.mimetype == "application/json"  # one PNG cannot hold three faces
    body = response.json
    assert body["faces"] == found_faces
    assert [entry["face"] for entry in body["results"]] == [0, 1, 2]
    pngs = [base64.b64decode(entry["anime_png_base64"]) for entry in body["results"]]
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    assert len(set(pngs)) == 3
    # The demo translator takes a batch of one: a call per face; the detector once.
    model_calls = {name: count for (name, signature), count in calls.items() if signature == "serving_default"}
    assert model_calls == {"face_detection": 1, "ugatit_selfie2anime": 3}

    one = client.post("/api/v1/translate?face=1", data=group_photo, content_type="image/jpeg")
    assert one.status_code == 200 and one.mimetype == "image/png"
    assert one.data == pngs[1]
    as_json = client.post("/api/v1/translate?face=1&format=json", data=group_photo, content_type="image/jpeg").json
    assert as_json["results"] == [body["results"][1]]


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("face=3", "face=3, but the photo has 3 faces: ask for face=0 to face=2"),
        ("faces=all&face=0", "give faces=all or face=<index>, not both"),
        ("faces=some", "faces must be one of all"),
        ("face=first", "face must be a whole number from 0"),
    ],
)
def test_a_choice_the_photo_cannot_meet_is_a_400(client: FlaskClient, group_photo: bytes, query: str, words: str):
    for path in ("/api/v1/search", "/api/v1/translate"):
        response = client.post(f"{path}?{query}", data=group_photo, content_type="image/jpeg")
        assert response.status_code == 400, response.data[:300]
        assert response.json["error"]["code"] == "bad_input"
        assert words in response.json["error"]["message"]


def test_translate_every_face_as_png_is_a_400(client: FlaskClient, group_photo: bytes) -> None:
    response = client.post("/api/v1/translate?faces=all&format=png", data=group_photo, content_type="image/jpeg")
    assert response.status_code == 400
    assert "faces=all answers JSON" in response.json["error"]["message"]


def test_a_photo_over_the_cap_is_a_400_that_says_so(make_app: Callable[..., Flask], group_photo: bytes) -> None:
    client = make_app(max_faces=2).test_client()
    for path in ("/api/v1/search?faces=all", "/api/v1/translate?faces=all"):
        response = client.post(path, data=group_photo, content_type="image/jpeg")
        assert response.status_code == 400, response.data[:300]
        message = response.json["error"]["message"]
        assert "the photo has 3 faces" in message and "at most 2" in message and "GATEWAY_MAX_FACES" in message
    page = client.post("/detect_face/image", data={"image_file": (io.BytesIO(group_photo), "g.jpg"), "faces": "all"})
    assert page.status_code == 400 and page.mimetype == "text/html"
    assert "GATEWAY_MAX_FACES" in page.get_data(as_text=True)
    # One face, or the best, is still answered.
    assert client.post("/api/v1/search?face=2", data=group_photo, content_type="image/jpeg").status_code == 200
    assert client.post("/api/v1/search", data=group_photo, content_type="image/jpeg").status_code == 200


# -- the page ----------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag of a page as (tag, attributes)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def having(self, tag: str, attribute: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag and attribute in attrs]


def _page(client: FlaskClient, photo: bytes, **form: str):
    return client.post("/detect_face/image", data={"image_file": (io.BytesIO(photo), "group.jpg"), **form})


@pytest.fixture(scope="module")
def every_face_page(demo_app: Flask, group_photo: bytes) -> str:
    response = _page(demo_app.test_client(), group_photo, faces="all", k="2")
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    return response.get_data(as_text=True)


def test_the_page_links_each_outlined_face_to_its_results(every_face_page: str) -> None:
    tags = Tags(every_face_page)
    outlines = tags.having("a", "data-face-link")
    assert [a["href"] for a in outlines] == ["#face-0", "#face-1", "#face-2"]
    choices = tags.having("a", "data-face-choice")
    assert [a["href"] for a in choices] == ["#face-0", "#face-1", "#face-2"]
    sections = tags.having("section", "data-face-result")
    assert [s["id"] for s in sections] == ["face-0", "face-1", "face-2"]
    assert not tags.having("rect", "data-face-box")  # no single "best" face on this page
    # Each face's section has its crop, its anime image and its two matches.
    assert len(tags.having("img", "data-crop")) == 3
    anime = tags.having("img", "data-anime")
    assert len(anime) == 3 and all(a["src"].startswith("data:image/png;base64,") for a in anime)
    thumbnails = [a for _, a in tags.tags if (a.get("src") or "").startswith("/api/v1/gallery/")]
    assert len(thumbnails) == 3 * 2
    # The retry form keeps the choice.
    (every,) = [a for name, a in tags.tags if name == "input" and a.get("name") == "faces"]
    assert every["value"] == "all" and "checked" in every


def test_the_page_for_one_chosen_face(client: FlaskClient, group_photo: bytes, found_faces: list[dict]) -> None:
    response = _page(client, group_photo, face="1", k="2")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    tags = Tags(page)
    assert not tags.having("a", "data-face-link")
    (box,) = tags.having("rect", "data-face-box")
    wanted = found_faces[1]["box"]
    assert float(box["x"].rstrip("%")) == pytest.approx(wanted["xmin"] * 100, abs=0.01)
    assert float(box["y"].rstrip("%")) == pytest.approx(wanted["ymin"] * 100, abs=0.01)
    assert len([a for name, a in tags.tags if name == "rect" and "face-box-other" in (a.get("class") or "")]) == 2
    assert "showing face 2" in page
    (every,) = [a for name, a in tags.tags if name == "input" and a.get("name") == "faces"]
    assert "checked" not in every


def test_the_page_answers_json_for_every_face(client: FlaskClient, group_photo: bytes, every_face: dict) -> None:
    response = client.post(
        "/detect_face/image?faces=all&k=3",
        data={"image_file": (io.BytesIO(group_photo), "group.jpg")},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200 and response.mimetype == "application/json"
    results = response.json["results"]
    assert all(
        _same_matches(ours["matches"], theirs["matches"])
        for ours, theirs in zip(results, every_face["results"], strict=True)
    )
    for entry in results:
        with Image.open(io.BytesIO(base64.b64decode(entry["anime_png_base64"]))) as anime:
            assert anime.size == (256, 256)
        assert base64.b64decode(entry["crop_jpeg_base64"]).startswith(b"\xff\xd8\xff")
