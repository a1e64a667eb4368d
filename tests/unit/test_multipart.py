"""The one-pass multipart parser gives what werkzeug's parser gives, body for body, and is taken for the usual ones."""

from __future__ import annotations

import io
from typing import Any

import pytest
from werkzeug.datastructures import FileStorage
from werkzeug.formparser import FormDataParser
from werkzeug.test import encode_multipart

from app.web.multipart import MAX_PARTS, OnePassFormParser

BOUNDARY = "----portrait-7MA4YWxkTrZu0gW"
PHOTO = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n" + b"\xff\xd8\xff" * 100


def _part(name: str, content: bytes, filename: str | None = None, extra_headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    kind = "Content-Type: image/jpeg\r\n" if filename is not None else ""
    return f"Content-Disposition: {disposition}\r\n{kind}{extra_headers}\r\n".encode() + content


def _body(*parts: bytes, boundary: str = BOUNDARY, end: bytes = b"\r\n") -> bytes:
    delimiter = f"--{boundary}".encode()
    return b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--" + end


USUAL = {
    "photo and a field": _body(_part("k", b"5"), _part("image_file", PHOTO, "portrait.jpg")),
    "photo only": _body(_part("image_file", PHOTO, "a.jpg")),
    "no final line break": _body(_part("image_file", PHOTO, "a.jpg"), end=b""),
    "empty file and empty field": _body(_part("image_file", b"", "empty.jpg"), _part("k", b"")),
    "two photos": _body(_part("image_file", PHOTO, "a.jpg"), _part("image_file", PHOTO[::-1], "b.jpg")),
    "a field in latin-1": _body(
        _part("label", "café".encode("latin-1"), extra_headers="Content-Type: text/plain; charset=iso-8859-1\r\n")
    ),
    "a field that is not UTF-8": _body(_part("k", b"\xff\xfe5")),
    "a file name with a quote": _body(_part("image_file", PHOTO, 'my \\"best\\" photo.jpg')),
    "no name": _body(b'Content-Disposition: form-data; filename="x.jpg"\r\n\r\n' + PHOTO),
    "a continued header": _body(b'Content-Disposition: form-data;\r\n name="k"\r\n\r\n3'),
    "a part whose body is one CR": _body(_part("k", b"\r")),
    "a part ending in CRLF": _body(_part("k", b"3\r\n")),
    "werkzeug's own encoding": encode_multipart(
        {"k": "3", "image_file": FileStorage(io.BytesIO(PHOTO), "photo.jpg")}, boundary=BOUNDARY
    )[1],
}

UNUSUAL = {
    "a preamble": b"hello\r\n" + USUAL["photo only"],
    "two line breaks first": b"\r\n\r\n" + USUAL["photo only"],
    "an epilogue": USUAL["photo only"] + b"trailing words",
    "LF line breaks": USUAL["photo and a field"].replace(b"\r\n", b"\n"),
    "whitespace after the boundary": USUAL["photo only"].replace(
        f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY} \r\n".encode()
    ),
    "the boundary inside a part": _body(_part("image_file", PHOTO + f"x--{BOUNDARY}y".encode(), "a.jpg")),
    "a boundary followed by other text": _body(_part("image_file", PHOTO + f"\r\n--{BOUNDARY}zz".encode(), "a.jpg")),
    "no final boundary": USUAL["photo only"][: -len(f"--{BOUNDARY}--\r\n")],
    "cut short": USUAL["photo only"][:1000],
    "no Content-Disposition": _body(b"Content-Type: text/plain\r\n\r\n5"),
    "a header that is not UTF-8": _body(b'Content-Disposition: form-data; name="\xff\xfe"\r\n\r\n5'),
    "a bare CR pair in the headers": _body(b'Content-Disposition: form-data; name="k"\r\r\n\r\n5'),
    "many parts": _body(*[_part(f"f{i}", b"x") for i in range(MAX_PARTS + 5)]),
    "empty": b"",
}


def _parse(parser_class: type[FormDataParser], body: bytes, **options: Any) -> Any:
    """What a parser makes of a body: the form, the files (name, filename, headers, content), or the error raised."""
    parser = parser_class(stream_factory=lambda **_: io.BytesIO(), **options)
    try:
        _, form, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), {"boundary": BOUNDARY})
    except Exception as exc:  # the same error either way is what is checked
        return type(exc).__name__
    return (
        list(form.items(multi=True)),
        [(key, f.filename, f.name, list(f.headers.items()), f.read()) for key, f in files.items(multi=True)],
    )


@pytest.mark.parametrize("body", list(USUAL.values()) + list(UNUSUAL.values()), ids=list(USUAL) + list(UNUSUAL))
def test_the_same_form_and_files_as_werkzeug(body: bytes) -> None:
    assert _parse(OnePassFormParser, body) == _parse(FormDataParser, body)


@pytest.mark.parametrize("body", list(USUAL.values()), ids=list(USUAL))
def test_usual_bodies_take_the_one_pass(body: bytes) -> None:
    parser = OnePassFormParser(stream_factory=lambda **_: io.BytesIO())
    assert parser._split(body, BOUNDARY.encode(), len(body)) is not None


@pytest.mark.parametrize("body", list(UNUSUAL.values()), ids=list(UNUSUAL))
def test_unusual_bodies_go_to_werkzeug(body: bytes) -> None:
    parser = OnePassFormParser(stream_factory=lambda **_: io.BytesIO())
    assert parser._split(body, BOUNDARY.encode(), len(body)) is None


@pytest.mark.parametrize(("options", "body"), [
    ({"max_form_parts": 3}, _body(*[_part(f"f{i}", b"x") for i in range(5)])),
    ({"max_form_memory_size": 500_000}, _body(_part("k", b"x" * 600_000))),
    ({"max_form_memory_size": 1000}, USUAL["photo and a field"]),
])  # fmt: skip
def test_werkzeugs_limits_still_hold(options: dict, body: bytes) -> None:
    assert (
        _parse(OnePassFormParser, body, **options) == _parse(FormDataParser, body, **options) == "RequestEntityTooLarge"
    )
