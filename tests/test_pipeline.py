"""The pipeline's request-level pieces: version and label pins, k checks."""

from __future__ import annotations

import pytest

from app.errors import BadInput
from app.pipeline import Pin, parse_pins


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {}),
        ({"k": "5"}, {}),
        ({"label": "canary"}, {s: Pin(label="canary") for s in ("detect", "encode", "search", "translate")}),
        ({"search_version": "3"}, {"search": Pin(version=3)}),
        (
            {"label": "canary", "translate_version": "2"},
            {
                "detect": Pin(label="canary"),
                "encode": Pin(label="canary"),
                "search": Pin(label="canary"),
                "translate": Pin(version=2),
            },
        ),
    ],
)
def test_parse_pins(params, expected):
    assert parse_pins(params) == expected


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"version": "abc"}, "positive integer"),
        ({"version": "-1"}, "positive integer"),
        ({"version": "1e9"}, "positive integer"),
        ({"label": "../etc"}, "label"),
        ({"label": ""}, "label"),
        ({"paint_version": "1"}, "unknown stage"),
        ({"search_version": "1", "search_label": "x"}, "not both"),
    ],
)
def test_parse_pins_refuses(params, words):
    with pytest.raises(BadInput, match=words):
        parse_pins(params)
