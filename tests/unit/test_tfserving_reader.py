"""TF Serving's REST request bodies read: the values TF Serving reads, its checks, and the reader's parse errors.

What a client sees as TF Serving's: ``NaN`` and ``Inf``/``Infinity`` read as numbers, duplicate members
kept in order, anything after the first value ignored, invalid UTF-8 kept byte for byte, integers past
int64/uint64 as doubles, a number too big for a double refused; and what the gateway adds: the nesting
limit, found where the document goes deeper. Parse errors say "JSON Parse error: <words> at offset: <byte>"
in the words of Python's reader.
"""

from __future__ import annotations

import json
import math
import re
import time
import tracemalloc

import grpc
import pytest

from app.errors import ServingStatus
from app.protocols import tfserving_reader
from app.protocols.tfserving_reader import MAX_DEPTH, TOO_DEEP, JsonObject, parse


def refused(body: bytes) -> str:
    with pytest.raises(ServingStatus) as caught:
        parse(body)
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    return caught.value.message


def test_an_empty_body_is_tf_servings_empty_document():
    assert refused(b"") == "JSON Parse error: The document is empty"


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (b"  \n", 3),
        (b"instances = [1, 2]", 0),
        (b'{"a" 1}', 5),
        (b"[1 2]", 3),
        (b'["abc', 1),
        (b'["a\nb"]', 3),
        (b"[nul]", 1),
        (b"[Infinit]", 1),
        (b"\xef\xbb\xbf{}", 0),  # a byte order mark is not JSON
        ('["é", x]'.encode(), 7),  # offsets count bytes, not characters (this one is character 6)
        (b'["\xff", x]', 6),
    ],
)
def test_a_malformed_body_is_a_parse_error_at_its_byte_offset(body, offset):
    assert re.fullmatch(rf"JSON Parse error: [A-Z][^\n]* at offset: {offset}", refused(body))


def test_nan_and_infinity_are_read_as_tf_serving_reads_them():
    values = parse(b"[NaN, Inf, Infinity, -Inf, -Infinity, -NaN]")
    assert math.isnan(values[0]) and values[1:5] == [math.inf, math.inf, -math.inf, -math.inf] and math.isnan(values[5])
    assert parse(b'{"Inf": ["-NaN", "Inf", -Inf]}') == JsonObject([("Inf", ["-NaN", "Inf", -math.inf])])
    # An error after them is still said where it is in the body as sent.
    assert refused(b"[Inf, -NaN, 1 2]").endswith(" at offset: 14")


def test_duplicate_members_are_kept_in_order():
    doc = parse(b'{"a": 1, "b": 2, "a": 3}')
    assert doc.members == [("a", 1), ("b", 2), ("a", 3)]
    assert doc.find("a") == 1  # the first one found, as FindMember finds it
    assert parse(b"{}") == JsonObject([])


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1} and then anything',
        b'{"a": 1}\x00{"b": 2}',
        b'{"a": 1} ' + b"[" * 100,  # deeper than MAX_DEPTH, but after the first value
        b'{"a": 1} "\\ud800"',
        b'{"a": 1} 1e400',
    ],
)
def test_what_follows_the_first_value_is_ignored(body):
    assert parse(body) == JsonObject([("a", 1)])


def test_invalid_utf8_is_kept_byte_for_byte():
    doc = parse(b'{"\xff": ["\xfe\xc3\xa9", "ok"]}')
    ((name, (text, plain)),) = doc.members
    assert name.encode("utf-8", "surrogateescape") == b"\xff"
    assert text.encode("utf-8", "surrogateescape") == b"\xfe\xc3\xa9" and plain == "ok"


def test_surrogate_escapes_must_pair():
    assert parse(b'["\\ud83d\\ude00"]') == ["\U0001f600"]
    assert parse(b'["\\\\ud800"]') == ["\\ud800"]  # an escaped backslash, then text
    for body, offset in ((b'["\\ud800x"]', 2), (b'["x\\udc80"]', 3), (b'["\\ud800\\ud800"]', 2)):
        assert refused(body) == f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"


def test_integers_past_int64_and_uint64_are_doubles():
    values = parse(b"[18446744073709551615, 18446744073709551616, -9223372036854775808, -9223372036854775809]")
    assert values == [2**64 - 1, float(2**64), -(2**63), float(-(2**63) - 1)]
    assert [type(value) for value in values] == [int, float, int, float]


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        (b"[1e400]", 1),
        (b"[-1E+400]", 1),
        (b'["1e400", 1e400]', 10),  # the one outside the string
        (b'{"a": [0.5, 2e999]}', 12),
        (b"[" + b"9" * 400 + b"]", 1),
        (b"[1" + b"0" * 310 + b".5]", 1),
        (b"[" + b"1" * 5000 + b"]", 1),  # past what Python reads as an integer at all
    ],
)
def test_a_number_too_big_for_a_double_is_refused(body, offset):
    assert refused(body) == f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"


def test_numbers_within_a_double_are_read():
    assert parse(b"[1e-400, 1.5e308, 0.1e309, 1E+99]") == [0.0, 1.5e308, 1e308, 1e99]
    assert parse(b'["1e400"]') == ["1e400"]


def test_a_body_whose_numbers_need_care_is_read_whole():
    """Numbers with 3-digit exponents go through the careful reader, which reads every number in Python: slower,
    but the whole body is read (the former exact reader gave up past 2 MB)."""
    body = b'{"instances": [' + b",".join([b"1e100"] * 500_000) + b"]}"
    assert parse(body).find("instances") == [1e100] * 500_000


def test_a_large_body_is_read_by_pythons_c_reader_alone(monkeypatch):
    """A 10 MB tensor body takes the C reader's path: no per-number hook, no rewriting, no per-byte Python loop."""
    assert isinstance(tfserving_reader._DECODER.scan_once, json.scanner.c_make_scanner)

    class Refused:
        def raw_decode(self, *args, **kwargs):
            raise AssertionError("the careful reader ran")

    def refuse(*args, **kwargs):
        raise AssertionError("a slow path ran")

    monkeypatch.setattr(tfserving_reader, "_CAREFUL_DECODER", Refused())
    monkeypatch.setattr(tfserving_reader, "_spell_out_constants", refuse)
    monkeypatch.setattr(tfserving_reader, "_number_offset", refuse)
    row = json.dumps([[0.5, -1.25, 3], [255, 1e-05, 0.3333333432674408]] * 50).encode()
    body = b'{"signature_name": "x", "instances": [[' + b", ".join([row] * 4000) + b", [[NaN, Infinity, -1e+30]]]]}"
    assert len(body) > 10_000_000
    rows = parse(body).find("instances")[0]
    assert len(rows) == 4001 and rows[0] == [[0.5, -1.25, 3], [255, 1e-05, 0.3333333432674408]] * 50
    assert math.isnan(rows[-1][0][0]) and rows[-1][0][1:] == [math.inf, -1e30]


# -- nesting ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "deep_at"),
    [
        (b"[" * 100 + b"]" * 100, MAX_DEPTH),
        (b"[" * 2000 + b"]" * 2000, MAX_DEPTH),  # deeper than Python's reader recurses
        (b"[" * 100, MAX_DEPTH),  # malformed past the limit: the limit is met first
        (b"[[1 2" + b"[" * 100, None),  # malformed before it: the parse error
        (b'{"a": "[[[[[[[[", "b": ' + b"[" * 66 + b"]" * 66 + b"}", None),  # brackets in a string are not nesting
        (b'{"a": "x\\\\", "b": ' + b"[" * 67 + b"]" * 67 + b"}", 18 + 66),  # a string ending in a backslash
        (b'{"a": "]]]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}", 19 + 66),
        (b'{"a": "\\"]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}", 19 + 66),  # an escaped quote does not end a string
        (b'{"a": "\\\\\\"]]", "b": ' + b"[" * 67 + b"]" * 67 + b"}", 21 + 66),  # a backslash, then a quote
        (b'[{"b64": "x"}, ' + b"[" * 65 + b"{}" + b"]" * 65 + b"]", None),  # as deep as a request can need
    ],
)
def test_nesting_past_max_depth_is_refused_where_it_goes_deeper(body, deep_at):
    if deep_at is None:
        try:
            parse(body)
        except ServingStatus as exc:
            assert TOO_DEEP not in exc.message
    else:
        assert refused(body) == f"JSON Parse error: {TOO_DEEP} at offset: {deep_at}"


@pytest.mark.parametrize("body", [b"[" * 4_000_000, b'{"a":' * 800_000, b"[" * 3_000_000 + b"\x00"])
def test_deep_nesting_is_refused_in_bounded_time_and_memory(body):
    """4 MB of "[" took 550 MB and 7 s of CPU before the depth was bounded; now about the body's size, at once."""
    tracemalloc.start()
    started = time.process_time()
    try:
        message = refused(body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert message.startswith(f"JSON Parse error: {TOO_DEEP}")
    assert peak < 8 * len(body), peak
    assert time.process_time() - started < 2  # CPU seconds, a generous bound: the unbounded parse took 7 s
