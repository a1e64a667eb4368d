"""Request parameters: one declaration per endpoint reads the query string and form fields alike."""

from __future__ import annotations

import io

import pytest
from flask import Flask

from app.errors import BadInput
from app.pipeline import Pin
from app.views.params import PageParams, SearchParams, TranslateParams, openapi_parameters, read_params

STAGES = ("detect", "encode", "search", "translate")


@pytest.fixture(scope="module")
def flask_app() -> Flask:
    return Flask(__name__)


def _read(flask_app: Flask, model, query: str = "", form: dict | None = None):
    data = None
    if form is not None:
        data = {**form, "image_file": (io.BytesIO(b"x"), "photo.jpg")}
    with flask_app.test_request_context(f"/?{query}", method="POST", data=data):
        from flask import request

        return read_params(model, request, ignore=("image_file",))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {}),
        ("k=5", {}),
        ("label=canary", {s: Pin(label="canary") for s in STAGES}),
        ("search_version=3", {"search": Pin(version=3)}),
        (
            "label=canary&translate_version=2",
            {
                "detect": Pin(label="canary"),
                "encode": Pin(label="canary"),
                "search": Pin(label="canary"),
                "translate": Pin(version=2),
            },
        ),
    ],
)
def test_pins(flask_app, query, expected):
    assert _read(flask_app, PageParams, query).pins() == expected


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("version=abc", "version must be a whole number from 1"),
        ("version=-1", "version must be a whole number from 1"),
        ("version=0", "version must be a whole number from 1"),
        ("version=1e9", "version must be a whole number"),
        ("version=%C2%B2", "version must be a whole number"),
        ("k=%C2%B2", "k must be a whole number from 1 to 100"),
        ("k=101", "k must be a whole number from 1 to 100"),
        ("label=../etc", "label must be 1-64 of the characters"),
        ("label=", "label must be 1-64"),
        ("paint_version=1", "unknown parameter 'paint_version'; this endpoint takes: k, faces, face, version, label"),
        ("kk=3", "unknown parameter 'kk'"),
        ("search_version=1&search_label=x", "not both"),
        ("k=3&k=4", "k is given twice with different values ('3' and '4')"),
    ],
)
def test_refusals_say_what_is_valid(flask_app, query, words):
    with pytest.raises(BadInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        _read(flask_app, PageParams, query).pins()


def test_form_fields_are_parameters_too(flask_app):
    params = _read(flask_app, SearchParams, "", {"k": "3", "images": "1", "search_label": "stable"})
    assert (params.k, params.images, params.pins()) == (3, True, {"search": Pin(label="stable")})


def test_query_and_form_may_agree_but_not_differ(flask_app):
    assert _read(flask_app, SearchParams, "k=3", {"k": "3"}).k == 3
    with pytest.raises(BadInput, match="k is given twice with different values"):
        _read(flask_app, SearchParams, "k=3", {"k": "4"})


def test_a_form_field_is_checked_like_a_query_parameter(flask_app):
    with pytest.raises(BadInput, match="k must be a whole number from 1 to 100, got '0'"):
        _read(flask_app, SearchParams, "", {"k": "0"})
    with pytest.raises(BadInput, match="unknown parameter 'kk'"):
        _read(flask_app, SearchParams, "", {"kk": "3"})


def test_the_document_describes_the_declared_parameters():
    by_name = {p["name"]: p for p in openapi_parameters(SearchParams, defaults={"k": 7})}
    assert set(by_name) == set(SearchParams.model_fields)
    assert by_name["k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 7}
    assert by_name["images"]["schema"] == {"type": "boolean", "default": False}
    assert by_name["search_label"]["schema"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$"
    assert "translate_version" not in by_name  # the search endpoint does not call the translator
    formats = {p["name"]: p for p in openapi_parameters(TranslateParams)}["format"]["schema"]
    assert formats["enum"] == ["png", "json"]


@pytest.mark.parametrize(("query", "choice"), [("", None), ("faces=all", "all"), ("face=0", 0), ("face=12", 12)])
def test_which_faces(flask_app, query, choice):
    for model in (SearchParams, TranslateParams, PageParams):
        params = _read(flask_app, model, query)
        assert params.face_choice() == choice
        assert params.asks_for_faces() == bool(query)


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("faces=every", "faces must be one of all"),
        ("faces=ALL", "faces must be one of all"),
        ("face=-1", "face must be a whole number from 0 to 999"),
        ("face=all", "face must be a whole number from 0 to 999"),
        ("face=1000", "face must be a whole number from 0 to 999"),
        ("faces=all&face=1", "give faces=all or face=<index>, not both"),
    ],
)
def test_face_refusals_say_what_is_valid(flask_app, query, words):
    with pytest.raises(BadInput, match=words):
        _read(flask_app, SearchParams, query).face_choice()
