"""TF Serving's REST request bodies read as JSON, into the values TF Serving's reader makes of them.

Python's C JSON reader reads the body; the checks around it make the values TF Serving's (RapidJSON's,
as util/json_tensor.cc parses with kParseNanAndInfFlag and kParseStopWhenDoneFlag):

- ``NaN``, ``Inf``, ``Infinity`` and their negatives are numbers; anything after the first value is ignored;
- objects keep every member in order, duplicates included (:class:`JsonObject`);
- strings are ``str`` whose bytes come back with ``encode("utf-8", "surrogateescape")``, invalid UTF-8
  included (RapidJSON copies the bytes it is given);
- an integer past int64 and uint64 is a double; a number too big for a double is refused, and so is a
  ``\\u`` escape of half a surrogate pair;
- unlike TF Serving, a document nested deeper than a request of the deepest tensor numpy holds
  (:data:`MAX_DEPTH`) is refused where it goes deeper: each level costs memory before any check.

A malformed body is TF Serving's INVALID_ARGUMENT "JSON Parse error: <words> at offset: <byte>", in the
words of the reader that found it (Python's, where TF Serving gives RapidJSON's).
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from app.errors import ServingStatus
from app.serving import tensors

__all__ = ["MAX_DEPTH", "TOO_DEEP", "JsonObject", "invalid_argument", "parse"]

# The deepest document a tensor of MAX_RANK dimensions needs: the request object, a named input's object (in
# "inputs", or an instance of "instances", whose list is the first dimension) and a {"b64": ...} value at the bottom.
MAX_DEPTH = tensors.MAX_RANK + 3


def invalid_argument(*parts: object) -> ServingStatus:
    """TF Serving's INVALID_ARGUMENT status, its message the parts joined."""
    return ServingStatus(grpc.StatusCode.INVALID_ARGUMENT, "".join(str(part) for part in parts))


class JsonObject:
    """A JSON object as RapidJSON's DOM holds it: every member in document order, duplicates kept.

    ``find`` answers the first member of a name, as ``FindMember`` does.
    """

    __slots__ = ("members",)

    def __init__(self, members: Sequence[tuple[str, Any]]) -> None:
        self.members = list(members)

    def find(self, key: str, default: Any = None) -> Any:
        for name, value in self.members:
            if name == key:
                return value
        return default

    def __contains__(self, key: str) -> bool:
        return any(name == key for name, _ in self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.members)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonObject) and self.members == other.members

    def __repr__(self) -> str:
        return f"JsonObject({self.members!r})"


# -- reading ------------------------------------------------------------------------------------------------

TOO_DEEP = (
    f"The document nests arrays and objects deeper than {MAX_DEPTH} levels; a tensor has at most "
    f"{tensors.MAX_RANK} dimensions."
)
_TOO_BIG = "Number too big to be stored in double."  # RapidJSON's words for TF Serving's check
_HALF_SURROGATE = "The surrogate pair in string is invalid."
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class _ParseError(Exception):
    def __init__(self, words: str, offset: int) -> None:
        super().__init__(words)
        self.words, self.offset = words, offset


class _SpellOut(Exception):
    """The reader stopped at ``Inf``, ``-Inf`` or ``-NaN``, which TF Serving reads and Python's reader does not."""


class _TooBig(Exception):
    """A number past the largest double (Python's reader would make it infinity)."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _integer(token: str) -> int | float:
    """An integer as RapidJSON holds it: int64 or uint64, else a double (refused past the largest double)."""
    if len(token.lstrip("-")) > 309:  # 10**309 and more: no double holds it (and Python would refuse to read it)
        raise _TooBig(token)
    value = int(token)
    if _INT64_MIN <= value <= _UINT64_MAX:
        return value
    try:
        return float(value)
    except OverflowError:
        raise _TooBig(token) from None


def _double(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise _TooBig(token)
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject)
# For a body with a number that could be read otherwise: a call per number, so only then.
_CAREFUL_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject, parse_int=_integer, parse_float=_double)
_LEADING_SPACE = re.compile(r"[ \t\n\r]*")


def parse(body: bytes) -> Any:
    """The JSON value of a request body, or TF Serving's INVALID_ARGUMENT "JSON Parse error: ..."."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        try:
            return _read(body, spelled_out=False)
        except _SpellOut:
            spelled, to_original = _spell_out_constants(body)
            try:
                return _read(spelled, spelled_out=True)
            except _ParseError as exc:
                raise _ParseError(exc.words, to_original(exc.offset)) from None
    except _ParseError as exc:
        raise invalid_argument(f"JSON Parse error: {exc.words} at offset: {exc.offset}") from None


def _read(body: bytes, spelled_out: bool) -> Any:
    text = body.decode("utf-8", "surrogateescape")
    decoder = _CAREFUL_DECODER if _has_unusual_number(body) else _DECODER
    try:
        value, end = decoder.raw_decode(text, _LEADING_SPACE.match(text).end())  # what follows is ignored
    except json.JSONDecodeError as exc:
        at = _byte_offset(body, text, exc.pos)
        _refuse_depth(body, at)  # a document too deep is refused where it goes deeper, before any later error
        if not spelled_out and _CONSTANT.match(body, at):
            raise _SpellOut from None
        raise _ParseError(exc.msg.removesuffix(" at"), at) from None
    except RecursionError:  # nested deeper than Python's reader recurses: far deeper than MAX_DEPTH
        _refuse_depth(body, len(body), growing=True)
        raise _ParseError(TOO_DEEP, 0) from None
    except _TooBig as exc:
        raise _ParseError(_TOO_BIG, _number_offset(body, exc.token)) from None
    if b"\\u" in body:
        _refuse_half_surrogates(body, _byte_offset(body, text, end))
    if isinstance(value, (list, JsonObject)):
        _refuse_depth(body, len(body))  # stops where the first value closes
    return value


def _byte_offset(body: bytes, text: str, index: int) -> int:
    return index if body.isascii() else len(text[:index].encode("utf-8", "surrogateescape"))


# What a number's characters are, to find unusual numbers without reading each one in Python: digits "0", an
# exponent's "e", "E" and "+" all "e", a minus and a point themselves, anything else " ".
_NUMBER_SHAPES = bytes(
    ord("0") if char in b"0123456789" else ord("e") if char in b"eE+" else char if char in b"-." else ord(" ")
    for char in range(256)
)
_LONG_INTEGER = b"0" * 20  # 10**19 and more: maybe past uint64 (19 digits after a minus: maybe past int64)


def _has_unusual_number(body: bytes) -> bool:
    """Whether the body may hold an integer past int64 or uint64, or a number past the largest double (an integer
    part of 20 digits or more, or an exponent of three digits); strings may make it say yes, which costs time,
    not truth."""
    shapes = body.translate(_NUMBER_SHAPES)
    return (
        b"e000" in shapes
        or b" " + _LONG_INTEGER in shapes
        or b"-" + _LONG_INTEGER[1:] in shapes
        or shapes.startswith(_LONG_INTEGER)
    )


def _number_offset(body: bytes, token: str) -> int:
    """Where the number ``token`` first stands outside a string (the reader met it first)."""
    quotes = _string_quotes(np.frombuffer(body, dtype=np.uint8))
    needle = token.encode("ascii")
    at = body.find(needle)
    while at >= 0:
        before = body[at - 1 : at] if at else b" "
        after = body[at + len(needle) : at + len(needle) + 1]
        standalone = not re.match(rb"[\w.+-]", before) and not re.match(rb"[\w.]", after)
        if standalone and np.searchsorted(quotes, at) % 2 == 0:
            return at
        at = body.find(needle, at + 1)
    return 0


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _refuse_half_surrogates(body: bytes, end: int) -> None:
    """A ``\\u`` escape of a high surrogate must be followed by one of a low surrogate, as RapidJSON checks; a low
    one alone is refused too (TF Serving takes it): its character has no UTF-8 bytes to give a tensor."""
    paired = -1
    for match in _SURROGATE_ESCAPE.finditer(body, 0, end):
        at = match.start()
        if at == paired or _escaped(body, at):
            continue
        if body[at + 3] in b"89abAB" and _LOW_SURROGATE_ESCAPE.match(body, at + 6):
            paired = at + 6
            continue
        raise _ParseError(_HALF_SURROGATE, at)


def _escaped(body: bytes, at: int) -> bool:
    """Whether the backslash at ``at`` is itself escaped: an odd run of backslashes before it."""
    start = at
    while start > 0 and body[start - 1] == 0x5C:
        start -= 1
    return (at - start) % 2 == 1


_CONSTANT = re.compile(rb"-?Inf(?!i)|-NaN")
_SPELLED = {b"Inf": b"Infinity", b"-Inf": b"-Infinity", b"-NaN": b" NaN"}


def _spell_out_constants(body: bytes) -> tuple[bytes, Callable[[int], int]]:
    """The body with ``Inf``, ``-Inf`` and ``-NaN`` outside strings spelled as Python's reader reads them, and what
    turns an offset in it back into one in the body."""
    matches = list(_CONSTANT.finditer(body))
    starts = np.array([match.start() for match in matches], dtype=np.int64)
    in_string = np.searchsorted(_string_quotes(np.frombuffer(body, dtype=np.uint8)), starts) % 2 == 1
    pieces: list[bytes] = []
    ends: list[int] = []  # where each spelled constant ends in the new body
    shifts: list[int] = []  # how far the new body has moved by then
    last = shift = 0
    for match, inside in zip(matches, in_string.tolist(), strict=True):
        if inside:
            continue
        spelled = _SPELLED[match.group()]
        pieces += (body[last : match.start()], spelled)
        last = match.end()
        shift += len(spelled) - len(match.group())
        ends.append(last + shift)
        shifts.append(shift)
    pieces.append(body[last:])

    def to_original(offset: int) -> int:
        index = bisect.bisect_right(ends, offset) - 1
        return offset - shifts[index] if index >= 0 else offset

    return b"".join(pieces), to_original


def _refuse_depth(body: bytes, limit: int, *, growing: bool = False) -> None:
    """Refuses the document where its first value opens a container past MAX_DEPTH before ``limit``.

    ``growing`` reads it in growing prefixes, so that a deep one is found after a few kilobytes, whatever its size.
    """
    if body.count(b"[", 0, limit) + body.count(b"{", 0, limit) <= MAX_DEPTH:
        return
    data = np.frombuffer(body, dtype=np.uint8)[:limit]
    size = 1 << 16 if growing else len(data)
    while True:
        deep_at = _too_deep(data[:size])
        if deep_at is not None:
            raise _ParseError(TOO_DEEP, deep_at)
        if size >= len(data):
            return
        size *= 8


def _string_quotes(data: np.ndarray) -> np.ndarray:
    """The offsets of the quotes that open and close strings (one after an odd run of backslashes is inside one)."""
    quotes = np.flatnonzero(data == 0x22)
    after_backslash = quotes[(quotes > 0) & (data[quotes - 1] == 0x5C)]
    if len(after_backslash):
        backslashes = np.flatnonzero(data == 0x5C)
        run_starts = backslashes[np.concatenate(([True], np.diff(backslashes) != 1))]
        run_start = run_starts[np.searchsorted(run_starts, after_backslash, side="right") - 1]
        quotes = np.setdiff1d(quotes, after_backslash[(after_backslash - run_start) % 2 == 1], assume_unique=True)
    return quotes


def _too_deep(data: np.ndarray) -> int | None:
    """Where the first value opens a container past MAX_DEPTH, or None: found from the brackets outside strings,
    which a well-formed document (or the well-formed part of one) counts right."""
    quotes = _string_quotes(data)
    opens = (data == 0x5B) | (data == 0x7B)
    brackets = np.flatnonzero(opens | (data == 0x5D) | (data == 0x7D))
    brackets = brackets[np.searchsorted(quotes, brackets) % 2 == 0]  # an even count of quotes before: not in a string
    depth = np.cumsum(np.where(opens[brackets], 1, -1))
    deep, closed = np.flatnonzero(depth > MAX_DEPTH), np.flatnonzero(depth == 0)  # the first value ends at depth 0
    if len(deep) and (not len(closed) or deep[0] < closed[0]):
        return int(brackets[deep[0]])
    return None
