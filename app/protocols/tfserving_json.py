"""TF Serving's REST JSON, as tensorflow_model_server 2.20.0 reads and writes it (util/json_tensor.cc).

Reading: the document is parsed as TF Serving's RapidJSON 1.1.0 parses it (iterative, ``NaN``
and ``Inf``/``Infinity`` accepted, anything after the first value ignored), so a malformed body
gets the same "JSON Parse error: <RapidJSON's words> at offset: <byte>" and the same values.
Python's C parser does the work when the body holds nothing it would read differently
(:func:`parse`); otherwise, and to word an error, a port of RapidJSON's state machine does.
Objects keep every member in order, duplicates included (:class:`JsonObject`), as RapidJSON's
DOM does; strings are ``str`` whose bytes are recovered with ``encode("utf-8", "surrogateescape")``
(RapidJSON copies the bytes it is given, valid UTF-8 or not). Unlike TF Serving, a document nested
deeper than a request of the deepest tensor numpy holds (:data:`MAX_DEPTH`) is refused where it
goes deeper, "JSON Parse error: ... at offset: <byte>": each level costs memory before any check.

- :func:`predict_request`: ``instances`` (row) or ``inputs`` (columnar) into one array per input,
  typed by the signature's TensorInfo as FillPredictRequestFromJson types them, with its checks
  and messages (levels, list sizes, shapes, base64, "not of expected type").
- :func:`examples_input`: ``examples`` and ``context`` of classify/regress into an ``Input`` of
  tf.Examples (``bytes_list``/``float_list``/``int64_list`` chosen per value).
- :func:`predict_response`, :func:`classification_json`, :func:`regression_json`: the answers,
  floats written as TF Serving writes them (six significant digits when they read back to the
  same value, else nine or seventeen, ``NaN``/``Infinity``), strings of ``*_bytes`` outputs as
  ``{"b64": ...}``.

Every error is a :class:`app.errors.ServingStatus` with TF Serving's code and message. Imports no
TensorFlow: the messages are ``app.serving.protos``'.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import grpc
import numpy as np

from app.errors import BadInput, ServingStatus
from app.protocols.json_text import html_safe
from app.serving import tensors
from app.serving.protos.tensorflow.core.example import example_pb2, feature_pb2
from app.serving.protos.tensorflow.core.framework import types_pb2
from app.serving.protos.tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

__all__ = [
    "MAX_DEPTH",
    "JsonObject",
    "PredictFormat",
    "PredictRequest",
    "classification_json",
    "data_type_string",
    "debug_string",
    "examples_input",
    "parse",
    "predict_request",
    "predict_response",
    "regression_json",
    "write_decimal",
]

_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"  # outputs named so are binary: written as {"b64": ...}
# The deepest document a tensor of MAX_RANK dimensions needs: the request object, a named input's object (in
# "inputs", or an instance of "instances", whose list is the first dimension) and a {"b64": ...} value at the bottom.
MAX_DEPTH = tensors.MAX_RANK + 3


def _invalid(*parts: object) -> ServingStatus:
    return ServingStatus(_INVALID, "".join(str(part) for part in parts))


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


# -- parsing --------------------------------------------------------------------------------------

_PARSE_ERRORS = {
    "empty": "The document is empty.",
    "value": "Invalid value.",
    "miss_name": "Missing a name for object member.",
    "miss_colon": "Missing a colon after a name of object member.",
    "miss_comma_curly": "Missing a comma or '}' after an object member.",
    "miss_comma_bracket": "Missing a comma or ']' after an array element.",
    "hex": "Incorrect hex digit after \\u escape in string.",
    "surrogate": "The surrogate pair in string is invalid.",
    "escape": "Invalid escape character in string.",
    "quote": "Missing a closing quotation mark in string.",
    "too_big": "Number too big to be stored in double.",
    "fraction": "Miss fraction part in number.",
    "exponent": "Miss exponent in number.",
    "too_deep": (
        f"The document nests arrays and objects deeper than {MAX_DEPTH} levels; a tensor has at most "
        f"{tensors.MAX_RANK} dimensions."
    ),
}
# What Python's json module could read differently from RapidJSON, found by _port_needed: surrogate escapes
# (RapidJSON refuses an unpaired high one), a NUL byte (RapidJSON's stream ends there), integers past uint64
# (RapidJSON makes them doubles), exponents of three digits (RapidJSON refuses some that Python takes as inf).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_DECODER = json.JSONDecoder(object_pairs_hook=JsonObject)


def parse(body: bytes) -> Any:
    """The JSON value of a request body, or TF Serving's INVALID_ARGUMENT "JSON Parse error: ..."."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _exactly(body)
    if not _port_needed(body, text):
        start = len(text) - len(text.lstrip(" \t\n\r"))
        try:
            value, _end = _DECODER.raw_decode(text, start)  # what follows the first value is ignored
        except (ValueError, RecursionError):
            pass  # malformed, or nested deeper than Python recurses: the port says which
        else:
            if isinstance(value, (list, JsonObject)):
                if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
                    deep_at = _too_deep(np.frombuffer(body, dtype=np.uint8))
                    if deep_at is not None:
                        raise _invalid(f"JSON Parse error: {_PARSE_ERRORS['too_deep']} at offset: {deep_at}")
                return value
            # A lone scalar: Python stops at "1" in "1.", where RapidJSON reads on to an error. The port is quick.
    return _exactly(body)


# The port reads about 2 MB a second: a larger body that needs it would hold a worker thread for seconds.
EXACT_PARSE_MAX_BYTES = 2 * 1024 * 1024


def _exactly(body: bytes) -> Any:
    """The body read by the port of RapidJSON's parser, which gives up past EXACT_PARSE_MAX_BYTES: it reads about
    2 MB a second, and a worker thread is not to be held for longer (an error it meets before is still said)."""
    try:
        return _Port(body, budget=EXACT_PARSE_MAX_BYTES).parse()
    except _OverBudget:
        raise _invalid(
            f"JSON Parse error: a body over {EXACT_PARSE_MAX_BYTES:,} bytes must be well-formed UTF-8 JSON without "
            "NUL bytes, lone surrogate escapes or exponents of three digits or more (the gateway reads such bodies "
            "exactly as TF Serving does, but slowly)"
        ) from None


class _OverBudget(Exception):
    """The port read past its budget without finishing."""


def _byte_set(chars: bytes) -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    table[list(chars)] = True
    return table


_DIGIT_BYTES, _E_BYTES, _SIGN_BYTES = _byte_set(b"0123456789"), _byte_set(b"eE"), _byte_set(b"+-")
_NOT_INTEGER_BEFORE, _NOT_INTEGER_AFTER = _byte_set(b".eE+"), _byte_set(b".eE")


def _port_needed(body: bytes, text: str) -> bool:
    """Whether the body holds something Python's parser reads otherwise than RapidJSON (some ms a megabyte)."""
    if b"\x00" in body or (b"\\u" in body and _SURROGATE_ESCAPE.search(text)):
        return True
    data = np.frombuffer(body, dtype=np.uint8)
    edges = np.diff(_DIGIT_BYTES[data].view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long = (ends - starts) >= 3
    starts, ends = starts[long], ends[long]
    if not len(starts):
        return False
    padded = np.concatenate((np.zeros(2, dtype=np.uint8), data, np.zeros(1, dtype=np.uint8)))
    before, before_sign, after = padded[starts + 1], padded[starts], padded[ends + 2]
    exponent = _E_BYTES[before] | (_SIGN_BYTES[before] & _E_BYTES[before_sign])
    integer = ((ends - starts) >= 20) & ~_NOT_INTEGER_BEFORE[before] & ~_NOT_INTEGER_AFTER[after]
    return bool(exponent.any() or integer.any())


def _too_deep(data: np.ndarray) -> int | None:
    """Where the first value of a well-formed document opens a container past MAX_DEPTH, or None: the offset the
    port stops at, found from the brackets outside strings (a few ms a megabyte)."""
    quotes = np.flatnonzero(data == 0x22)
    after_backslash = quotes[(quotes > 0) & (data[quotes - 1] == 0x5C)]
    if len(after_backslash):  # a quote after an odd run of backslashes is part of its string
        backslashes = np.flatnonzero(data == 0x5C)
        run_starts = backslashes[np.concatenate(([True], np.diff(backslashes) != 1))]
        run_start = run_starts[np.searchsorted(run_starts, after_backslash, side="right") - 1]
        quotes = np.setdiff1d(quotes, after_backslash[(after_backslash - run_start) % 2 == 1], assume_unique=True)
    opens = (data == 0x5B) | (data == 0x7B)
    brackets = np.flatnonzero(opens | (data == 0x5D) | (data == 0x7D))
    brackets = brackets[np.searchsorted(quotes, brackets) % 2 == 0]  # an even count of quotes before: not in a string
    depth = np.cumsum(np.where(opens[brackets], 1, -1))
    deep, closed = np.flatnonzero(depth > MAX_DEPTH), np.flatnonzero(depth == 0)  # the first value ends at depth 0
    if len(deep) and (not len(closed) or deep[0] < closed[0]):
        return int(brackets[deep[0]])
    return None


class _ParseError(Exception):
    def __init__(self, kind: str, offset: int) -> None:
        super().__init__(kind)
        self.kind, self.offset = kind, offset


# RapidJSON's iterative parser: its states, and Predict(state, token) as a table (absent: error).
_START, _FINISH, _OBJ_INIT, _KEY, _KV_DELIM, _MEMBER, _MEMBER_DELIM, _ARR_INIT, _ELEMENT, _ELEM_DELIM = range(10)
_VALUE_TOKENS = ("string", "false", "true", "null", "number")
_PREDICT: dict[int, dict[str, str]] = {
    _START: {"[": "array", "{": "object", **dict.fromkeys(_VALUE_TOKENS, "value")},
    _OBJ_INIT: {"}": "end_object", "string": "key"},
    _KEY: {":": "colon"},
    _KV_DELIM: {"[": "array", "{": "object", **dict.fromkeys(_VALUE_TOKENS, "member")},
    _MEMBER: {"}": "end_object", ",": "member_comma"},
    _MEMBER_DELIM: {"}": "end_object", "string": "key"},
    _ARR_INIT: {"[": "array", "]": "end_array", "{": "object", **dict.fromkeys(_VALUE_TOKENS, "element")},
    _ELEMENT: {"]": "end_array", ",": "element_comma"},
    _ELEM_DELIM: {"[": "array", "]": "end_array", "{": "object", **dict.fromkeys(_VALUE_TOKENS, "element")},
}
_STATE_ERROR = {  # HandleError: the error a state reports when the next token does not fit
    _START: "empty",
    _FINISH: "value",
    _OBJ_INIT: "miss_name",
    _MEMBER_DELIM: "miss_name",
    _KEY: "miss_colon",
    _MEMBER: "miss_comma_curly",
    _KV_DELIM: "value",
    _ARR_INIT: "value",
    _ELEM_DELIM: "value",
    _ELEMENT: "miss_comma_bracket",
}
_TOKENS = {ord("["): "[", ord("]"): "]", ord("{"): "{", ord("}"): "}", ord(","): ",", ord(":"): ":",
           ord('"'): "string", ord("f"): "false", ord("t"): "true", ord("n"): "null"}  # fmt: skip
_ESCAPES = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b", ord("f"): b"\f",
            ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}  # fmt: skip
_WHITESPACE = b" \n\r\t"
_OPEN_RUN = re.compile(rb"\[{0,%d}" % MAX_DEPTH)
_DIGITS = frozenset(b"0123456789")


class _Port:
    """RapidJSON 1.1.0's GenericReader::IterativeParse, building the DOM as GenericDocument does.

    The stream ends at the body's end or at its first NUL byte (MemoryStream's ``Peek``).
    """

    def __init__(self, data: bytes, budget: int | None = None) -> None:
        end = data.find(b"\x00")
        self.data = data if end < 0 else data[:end]
        self.pos = 0
        self.budget = len(self.data) if budget is None else budget

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else 0

    def consume(self, char: str) -> bool:
        if self.peek() == ord(char):
            self.pos += 1
            return True
        return False

    def skip_whitespace(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def parse(self) -> Any:
        try:
            return self._parse()
        except _ParseError as exc:
            raise _invalid(f"JSON Parse error: {_PARSE_ERRORS[exc.kind]} at offset: {exc.offset}") from None

    def _parse(self) -> Any:
        data, size = self.data, len(self.data)
        state = _START
        # Open containers: (state to return to, the list or the object's values, the object's member names).
        stack: list[tuple[int, list, list | None]] = []
        self.skip_whitespace()
        while self.pos < size:
            if self.pos > self.budget:
                raise _OverBudget
            char = data[self.pos]
            token = _TOKENS.get(char, "number")
            action = _PREDICT.get(state, {}).get(token)
            if action is None:
                raise _ParseError(_STATE_ERROR[state], self.pos)
            if action in ("array", "object"):
                if len(stack) >= MAX_DEPTH:
                    raise _ParseError("too_deep", self.pos)
                back = _ELEMENT if state in (_ARR_INIT, _ELEM_DELIM) else _MEMBER if state == _KV_DELIM else state
                stack.append((back, [], None if action == "array" else []))
                self.pos += 1
                state = _ARR_INIT if action == "array" else _OBJ_INIT
                if action == "array":  # a run of "[": each opens an array inside the last (deep nesting, quickly)
                    run = min(_OPEN_RUN.match(data, self.pos).end() - self.pos, MAX_DEPTH - len(stack))
                    stack.extend([(_ELEMENT, [], None) for _ in range(run)])
                    self.pos += run
            elif action == "key":
                stack[-1][2].append(self.string())
                state = _KEY
            elif action == "colon":
                self.pos += 1
                state = _KV_DELIM
            elif action in ("member", "element", "value"):
                value = self.value()
                if action == "value":
                    return value  # kParseStopWhenDoneFlag: what follows is not read
                stack[-1][1].append(value)
                state = _MEMBER if action == "member" else _ELEMENT
            elif action in ("member_comma", "element_comma"):
                self.pos += 1
                state = _MEMBER_DELIM if action == "member_comma" else _ELEM_DELIM
            else:  # end_object, end_array
                if action == "end_object" and state == _MEMBER_DELIM:
                    raise _ParseError("miss_name", self.pos)  # a trailing comma
                if action == "end_array" and state == _ELEM_DELIM:
                    raise _ParseError("value", self.pos)
                while True:  # a run of "]" closes arrays one after another
                    back, items, names = stack.pop()
                    value = JsonObject(list(zip(names, items, strict=True))) if action == "end_object" else items
                    self.pos += 1
                    if not stack:
                        return value
                    stack[-1][1].append(value)
                    state = back
                    if state != _ELEMENT or self.pos >= size or data[self.pos] != 0x5D:  # "]"
                        break
                    action = "end_array"
            # Whitespace, skipped here rather than by a call: this loop runs once a token.
            while self.pos < size and data[self.pos] in _WHITESPACE:
                self.pos += 1
        raise _ParseError(_STATE_ERROR[state], self.pos)

    def value(self) -> Any:
        char = self.peek()
        for word, result in (("null", None), ("true", True), ("false", False)):
            if char == ord(word[0]):
                self.pos += 1
                if all(self.consume(letter) for letter in word[1:]):
                    return result
                raise _ParseError("value", self.pos)
        if char == ord('"'):
            return self.string()
        return self.number()

    def string(self) -> str:
        self.pos += 1  # the opening quote
        out = bytearray()
        data = self.data
        while True:
            # The bytes up to the next quote, backslash or control character, as they are.
            start = self.pos
            while self.pos < len(data) and data[self.pos] not in b'"\\' and data[self.pos] >= 0x20:
                self.pos += 1
            out += data[start : self.pos]
            char = self.peek()
            if char == ord("\\"):
                escape_at = self.pos
                self.pos += 1
                kind = self.peek()
                if kind in _ESCAPES:
                    self.pos += 1
                    out += _ESCAPES[kind]
                elif kind == ord("u"):
                    self.pos += 1
                    codepoint = self.hex4(escape_at)
                    if 0xD800 <= codepoint <= 0xDBFF:
                        if not (self.consume("\\") and self.consume("u")):
                            raise _ParseError("surrogate", escape_at)
                        low = self.hex4(escape_at)
                        if not 0xDC00 <= low <= 0xDFFF:
                            raise _ParseError("surrogate", escape_at)
                        codepoint = ((codepoint - 0xD800) << 10 | (low - 0xDC00)) + 0x10000
                    out += chr(codepoint).encode("utf-8", "surrogatepass")  # a lone low surrogate too
                else:
                    raise _ParseError("escape", escape_at)
            elif char == ord('"'):
                self.pos += 1
                return out.decode("utf-8", "surrogateescape")
            elif char == 0:
                raise _ParseError("quote", self.pos)
            else:  # a control character
                raise _ParseError("escape", self.pos)

    def hex4(self, escape_at: int) -> int:
        digits = self.data[self.pos : self.pos + 4]
        if len(digits) < 4 or not all(chr(c) in "0123456789abcdefABCDEF" for c in digits):
            raise _ParseError("hex", escape_at)
        self.pos += 4
        return int(digits, 16)

    def number(self) -> int | float:
        """ParseNumber: RapidJSON's grammar and errors; the value as Python reads the same text."""
        start = self.pos
        minus = self.consume("-")
        char = self.peek()
        if char == ord("N") or char == ord("I"):
            if self.consume("N"):
                if self.consume("a") and self.consume("N"):
                    return math.nan
                raise _ParseError("value", self.pos)
            self.pos += 1
            if not (self.consume("n") and self.consume("f")):
                raise _ParseError("value", self.pos)
            if self.peek() == ord("i") and not all(self.consume(letter) for letter in "inity"):
                raise _ParseError("value", self.pos)
            return -math.inf if minus else math.inf
        if char not in _DIGITS:
            raise _ParseError("value", self.pos)
        digits_at = self.pos
        if char == ord("0"):
            self.pos += 1
        else:
            while self.peek() in _DIGITS:
                self.pos += 1
        integer = self.data[digits_at : self.pos]
        is_double = False
        if self.consume("."):
            if self.peek() not in _DIGITS:
                raise _ParseError("fraction", self.pos)
            fraction_at = self.pos
            while self.peek() in _DIGITS:
                self.pos += 1
            fraction_digits = self.pos - fraction_at
            is_double = True
        else:
            fraction_digits = 0
        if self.consume("e") or self.consume("E"):
            is_double = True
            negative_exponent = False
            if not self.consume("+"):
                negative_exponent = self.consume("-")
            if self.peek() not in _DIGITS:
                raise _ParseError("exponent", self.pos)
            exponent_at = self.pos
            while self.peek() in _DIGITS:
                self.pos += 1
            exponent = int(self.data[exponent_at : self.pos])
            # RapidJSON stops at an exponent past 308 less the fraction's digits (a negative one is never too big).
            if not negative_exponent and exponent > 308 + _counted_fraction(integer, fraction_digits):
                raise _ParseError("too_big", start)
        text = self.data[start : self.pos].decode("ascii")
        if is_double:
            return float(text)
        value = int(text)
        if _INT64[0] <= value <= _UINT64_MAX:
            return value
        # Past int64 (negative) or uint64: RapidJSON goes on in double and stops near DBL_MAX.
        if len(integer) > 1 and int(integer[:-1]) >= 1.7976931348623157e307:
            raise _ParseError("too_big", start)
        return float(value)


def _counted_fraction(integer: bytes, fraction_digits: int) -> int:
    """The fraction digits RapidJSON counts into ``expFrac`` (it stops counting past 2^53 - 1 of significand)."""
    return fraction_digits if len(integer) + fraction_digits <= 16 else max(0, 16 - len(integer))


# -- what a value is called in messages ---------------------------------------------------------------


def json_type(value: Any) -> str:
    """JsonTypeString: RapidJSON's name for the kind of a value."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, JsonObject):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


_DEBUG_LIMIT = 256  # kMaxJsonDebugStringBytes


class _Full(Exception):
    """The debug writer refused to write on: the limit is reached, or a value cannot be written (NaN)."""


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: RapidJSON's PrettyWriter (4-space indent, arrays on one line), cut near 256 bytes.

    Each event is written only while fewer than 256 bytes are out, so the text can end mid-document;
    a NaN or infinity ends it too (RapidJSON's writer refuses them).
    """
    out: list[str] = []
    size = [0]
    levels: list[list] = []  # [in_array, value_count]

    def put(text: str) -> None:
        out.append(text)
        size[0] += len(text.encode("utf-8", "surrogateescape"))

    def check() -> None:
        if size[0] >= _DEBUG_LIMIT:
            raise _Full

    def prefix() -> None:
        if not levels:
            return
        level = levels[-1]
        if level[0]:
            if level[1] > 0:
                put(", ")
        else:
            if level[1] > 0:
                put(",\n" if level[1] % 2 == 0 else ": ")
            else:
                put("\n")
            if level[1] % 2 == 0:
                put(" " * 4 * len(levels))
        level[1] += 1

    def scalar(text: str | None) -> None:
        check()
        prefix()
        if text is None:
            raise _Full
        put(text)

    # Iterative: a document may be nested far deeper than Python recurses.
    work: list[tuple[str, Any]] = [("value", value)]
    try:
        while work:
            kind, item = work.pop()
            if kind == "end":
                check()
                in_array, count = levels.pop()
                if not in_array and count:
                    put("\n" + " " * 4 * len(levels))
                put("]" if in_array else "}")
            elif kind == "key":
                scalar(_json_string(item))
            elif isinstance(item, list):
                check()
                prefix()
                levels.append([True, 0])
                put("[")
                work.append(("end", None))
                work.extend(("value", element) for element in reversed(item))
            elif isinstance(item, JsonObject):
                check()
                prefix()
                levels.append([False, 0])
                put("{")
                work.append(("end", None))
                for name, member in reversed(item.members):
                    work.append(("value", member))
                    work.append(("key", name))
            else:
                scalar(_scalar_text(item))
    except _Full:
        pass
    return "".join(out)


def _scalar_text(value: Any) -> str | None:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, int):
        return str(value)
    return _rapidjson_double(value)


def _json_string(text: str) -> str:
    """RapidJSON's WriteString: quotes, backslashes and control characters escaped; anything else as it is."""
    escaped = []
    for char in text:
        code = ord(char)
        if char == '"':
            escaped.append('\\"')
        elif char == "\\":
            escaped.append("\\\\")
        elif code < 0x20:
            short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code)
            escaped.append(short or f"\\u00{code:02X}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'


def _rapidjson_double(value: float) -> str | None:
    """Writer::WriteDouble: the shortest digits (Grisu2's, which are repr's), laid out as Prettify lays them."""
    if math.isnan(value) or math.isinf(value):
        return None
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    exact = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, exact.digits))
    k = int(exact.exponent)  # |value| = digits * 10^k
    length = len(digits)
    kk = length + k
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = digits + "e" + str(kk - 1)
    else:
        text = digits[0] + "." + digits[1:] + "e" + str(kk - 1)
    return ("-" if value < 0 else "") + text


# -- TF's dtypes -------------------------------------------------------------------------------------


def data_type_string(datatype: int) -> str:
    """DataTypeString: "float", "int32", "string", "half", ... for a TF DataType enum value."""
    try:
        name = types_pb2.DataType.Name(datatype)
    except ValueError:
        return f"unknown dtype enum ({datatype})"
    if name == "DT_INVALID":
        return "INVALID"
    return name.removeprefix("DT_").lower()


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float


def _int_in(low: int, high: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return type(value) is int and low <= value <= high

    return check


def _integers(dtype: type, low: int, high: int, via: type | None = None) -> _Conversion:
    return _Conversion(
        _int_in(low, high), np.dtype(dtype), None if via is None else np.dtype(via), frozenset({int}), (low, high)
    )


@dataclass(frozen=True)
class _Conversion:
    """AddValueToTensor for one dtype: which JSON values it takes, and the array they become."""

    accepts: Callable[[Any], bool]
    dtype: np.dtype
    via: np.dtype | None = None  # the wire type in between (int_val is int32, GetFloat goes through double)
    kinds: frozenset[type] = frozenset()  # the Python types of the values it takes (bounds aside)
    bounds: tuple[int, int] | None = None


_NUMBERS = frozenset({int, float})
_CONVERSIONS: dict[int, _Conversion] = {
    types_pb2.DT_FLOAT: _Conversion(_is_number, np.dtype(np.float32), np.dtype(np.float64), _NUMBERS),
    types_pb2.DT_DOUBLE: _Conversion(_is_number, np.dtype(np.float64), None, _NUMBERS),
    # IsInt(): a 32-bit integer, then int_val; Tensor::FromProto casts it to 8 or 16 bits as C++ does (wrapping).
    types_pb2.DT_INT32: _integers(np.int32, *_INT32),
    types_pb2.DT_INT16: _integers(np.int16, *_INT32, via=np.int32),
    types_pb2.DT_INT8: _integers(np.int8, *_INT32, via=np.int32),
    types_pb2.DT_UINT8: _integers(np.uint8, *_INT32, via=np.int32),
    types_pb2.DT_INT64: _integers(np.int64, *_INT64),
    types_pb2.DT_UINT32: _integers(np.uint32, 0, _UINT32_MAX),
    types_pb2.DT_UINT64: _integers(np.uint64, 0, _UINT64_MAX),
    types_pb2.DT_BOOL: _Conversion(lambda value: type(value) is bool, np.dtype(np.bool_), None, frozenset({bool})),
    types_pb2.DT_STRING: _Conversion(lambda value: type(value) is str, np.dtype(object)),
}


def _values_array(values: list, conversion: _Conversion, shape: tuple[int, ...]) -> np.ndarray:
    if conversion.dtype.kind == "O":
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    with np.errstate(over="ignore"):  # GetFloat() of a double past FLT_MAX is inf, silently
        if conversion.via is not None:
            return np.array(values, dtype=conversion.via).astype(conversion.dtype).reshape(shape)
        return np.array(values, dtype=conversion.dtype).reshape(shape)


def _type_error(value: Any, datatype: int) -> ServingStatus:
    return _invalid(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: "
        f"{data_type_string(datatype)}"
    )


def _is_base64_object(value: Any) -> bool:
    return isinstance(value, JsonObject) and len(value) == 1 and isinstance(value.find(BASE64_KEY), str)


def _decode_base64(value: Any) -> bytes:
    """JsonDecodeBase64Object: ``{"b64": "<base64>"}`` (absl's decoder: padding optional, no stray bytes)."""
    if not _is_base64_object(value):
        raise _invalid(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value.find(BASE64_KEY).encode("utf-8", "surrogateescape")
    try:
        return _unbase64(text)
    except (binascii.Error, ValueError):
        raise _invalid("Unable to base64 decode") from None


def _unbase64(text: bytes) -> bytes:
    stripped = text.rstrip(b"=")
    if len(text) - len(stripped) > 2 or (len(text) % 4 and len(text) != len(stripped)):
        raise ValueError("bad padding")
    if len(stripped) % 4 == 1:
        raise ValueError("bad length")
    return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)


# -- predict requests ------------------------------------------------------------------------------------


class PredictFormat(enum.Enum):
    """JsonPredictRequestFormat: the answer has the request's layout."""

    ROW = "instances"  # answered as "predictions"
    COLUMNAR = "inputs"  # answered as "outputs"


@dataclass(frozen=True)
class PredictRequest:
    signature_name: str  # "" when the request names none (the default signature)
    inputs: dict[str, np.ndarray]
    format: PredictFormat


def signature_name(doc: Any) -> str:
    """FillSignature: the optional ``signature_name``, which must be a string."""
    if not isinstance(doc, JsonObject):
        raise _invalid(f"JSON Value: {debug_string(doc)} Is not object")
    name = doc.find("signature_name", _MISSING)
    if name is _MISSING:
        return ""
    if not isinstance(name, str):
        raise _invalid(
            f"JSON Value: {debug_string(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


_MISSING = object()


def predict_request(doc: Any, input_types: Callable[[str], Mapping[str, int]]) -> PredictRequest:
    """FillPredictRequestFromJson: the signature's inputs from ``instances`` or ``inputs``.

    ``input_types(signature_name)`` gives the signature's input aliases and DataTypes (it is where
    an unknown model, version, label or signature fails, after the body has been read).
    """
    name = signature_name(doc)
    types = dict(input_types(name))
    if not types:
        raise _invalid(f"Failed to get input map for signature: {name or 'DEFAULT'}")
    instances = doc.find("instances", _MISSING)
    inputs = doc.find("inputs", _MISSING)
    if instances is not _MISSING:
        if inputs is not _MISSING:
            raise _invalid(
                f"JSON Value: {debug_string(doc)} Not formatted correctly expecting only one of 'inputs' or "
                "'instances' keys to exist "
            )
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {debug_string(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {debug_string(doc)} No values in 'instances' array")
        return PredictRequest(name, _from_instances(instances, types), PredictFormat.ROW)
    if inputs is not _MISSING:
        return PredictRequest(name, _from_inputs(inputs, types), PredictFormat.COLUMNAR)
    raise _invalid("Missing 'inputs' or 'instances' key")


def _dense_shape(value: Any) -> tuple[int, ...]:
    """GetDenseTensorShape: the sizes of the first element at each level of nesting."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return tuple(shape)


def _fill(value: Any, datatype: int, shape: tuple[int, ...], out: list) -> None:
    """FillTensorProto: every leaf of ``value`` into ``out``, checked against ``shape`` and the dtype, in order."""
    conversion = _CONVERSIONS.get(datatype)
    if _fill_rectangular(value, conversion, shape, out):
        return
    rank = len(shape)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            _add_value(item, level, rank, datatype, conversion, out)
            continue
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise _invalid(
                f"Encountered list at unexpected size: {len(item)} at level: {level} expected size: {shape[level]}"
            )
        if level == rank - 1 and conversion is not None:
            leaves = item
            if conversion.dtype.kind != "O" and all(map(conversion.accepts, leaves)):
                out.extend(leaves)  # the common case, checked in one pass
                continue
            for leaf in leaves:
                if isinstance(leaf, list):
                    raise _invalid(f"Encountered list at unexpected level: {rank} expected < {rank}")
                _add_value(leaf, rank, rank, datatype, conversion, out)
            continue
        stack.extend((element, level + 1) for element in reversed(item))


def _fill_rectangular(value: Any, conversion: _Conversion | None, shape: tuple[int, ...], out: list) -> bool:
    """The common case at numpy's speed: a big tensor of the right shape whose every value its dtype takes.

    False (``out`` untouched) for anything else, which the walk then checks value by value.
    """
    if conversion is None or not conversion.kinds or len(shape) < 2 or math.prod(shape) < 4096:
        return False
    try:
        grid = np.array(value, dtype=object)
    except ValueError:  # ragged
        return False
    if grid.shape != shape:
        return False
    flat = grid.ravel().tolist()
    if not set(map(type, flat)) <= conversion.kinds:
        return False
    if conversion.bounds is not None and not conversion.bounds[0] <= min(flat) <= max(flat) <= conversion.bounds[1]:
        return False
    out.extend(flat)
    return True


def _add_value(value: Any, level: int, rank: int, datatype: int, conversion: _Conversion | None, out: list) -> None:
    if level != rank:
        raise _invalid(
            f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
            f"Expected at level: {rank}"
        )
    if isinstance(value, JsonObject):
        if datatype != types_pb2.DT_STRING:
            raise _type_error(value, datatype)
        out.append(_decode_base64(value))
        return
    if conversion is None:
        raise ServingStatus(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Conversion of JSON Value: {debug_string(value)} to type: {data_type_string(datatype)}",
        )
    if not conversion.accepts(value):
        raise _type_error(value, datatype)
    out.append(value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value)


def _check_rank(shape: tuple[int, ...]) -> None:
    """TF takes up to 254 dimensions, but no array here can hold more than MAX_RANK."""
    if len(shape) > tensors.MAX_RANK:
        raise _invalid(
            f"Shape {_shape_text(shape)} has too many dimensions: {len(shape)}, "
            f"at most {tensors.MAX_RANK} are supported"
        )


def _tensor(value: Any, datatype: int) -> tuple[tuple[int, ...], list]:
    shape = _dense_shape(value)
    _check_rank(shape)
    values: list = []
    _fill(value, datatype, shape, values)
    return shape, values


def _array(datatype: int, shape: tuple[int, ...], values: list) -> np.ndarray:
    conversion = _CONVERSIONS.get(datatype)
    if conversion is None:  # no value was there to convert (empty lists): an empty tensor of the signature's dtype
        try:
            return np.empty(shape, dtype=tensors.numpy_dtype(datatype))
        except BadInput:
            raise ServingStatus(
                grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: [] to type: {data_type_string(datatype)}"
            ) from None
    return _values_array(values, conversion, shape)


def _status_text(status: ServingStatus) -> str:
    """absl::Status::ToString(): "<CODE>: <message>"."""
    return f"{status.status.name}: {status.message}"


def _from_instances(instances: list, types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: one tensor per input, the instances stacked on a new first dimension."""
    first = instances[0]
    if not isinstance(first, JsonObject) and len(types) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )

    def is_element_object(value: Any) -> bool:
        return isinstance(value, JsonObject) and not _is_base64_object(value)

    named = is_element_object(first)
    names = sorted(types)
    shapes: dict[str, tuple[int, ...]] = {}
    sizes: dict[str, int] = {}
    values: dict[str, list] = {}

    def add(item: Any, name: str) -> None:
        """AddInstanceItem."""
        if name not in types:
            raise _invalid(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        _check_rank((len(instances), *shape))  # the instances are stacked on a first dimension
        collected: list = []
        _fill(item, types[name], shape, collected)
        values.setdefault(name, []).extend(collected)
        size = len(collected)
        if name not in sizes:
            sizes[name], shapes[name] = size, shape
        elif sizes[name] != size:
            raise _invalid(f"Expecting tensor size: {sizes[name]} but got: {size}")
        elif shapes[name] != shape:
            raise _invalid(f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}")

    for count, element in enumerate(instances):
        if named:
            if not is_element_object(element):
                raise _invalid(f"Expecting object but got list at item {count} of input list")
            keys = set()
            for name, item in element:
                keys.add(name)
                try:
                    add(item, name)
                except ServingStatus as exc:
                    raise _invalid(
                        f"Failed to process element: {count} key: {name} of 'instances' list. "
                        f"Error: {_status_text(exc)}"
                    ) from None
            if keys != set(types):
                raise _invalid(
                    f"Failed to process element: {count} of 'instances' list. JSON object: {debug_string(element)} "
                    f"keys must be equal to: {','.join(names)}"
                )
        else:
            if is_element_object(element):
                raise _invalid(f"Expecting value/list but got object at item {count} of input list")
            try:
                add(element, names[0])
            except ServingStatus as exc:
                raise _invalid(
                    f"Failed to process element: {count} of 'instances' list. Error: {_status_text(exc)}"
                ) from None
    return {name: _array(types[name], (len(instances), *shapes[name]), values[name]) for name in sorted(values)}


def _from_inputs(inputs: Any, types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one value (a single input) or an object of one value per input."""
    if not isinstance(inputs, JsonObject) or _is_base64_object(inputs):
        if len(types) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        (name,) = types
        shape, values = _tensor(inputs, types[name])
        return {name: _array(types[name], shape, values)}
    arrays = {}
    for name in sorted(types):
        item = inputs.find(name, _MISSING)
        if item is _MISSING:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        shape, values = _tensor(item, types[name])
        arrays[name] = _array(types[name], shape, values)
    return arrays


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


# -- classify and regress requests -------------------------------------------------------------------------


def examples_input(doc: Any) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: the signature name and the ``Input`` of tf.Examples."""
    name = signature_name(doc)
    request_input = input_pb2.Input()
    context = doc.find("context", _MISSING)
    if context is not _MISSING:
        _example(context, request_input.example_list_with_context.context)
    examples = doc.find("examples", _MISSING)
    if examples is _MISSING:
        raise _invalid(
            f"JSON Value: {debug_string(doc)} When method is classify, key 'examples' is expected and was not found"
        )
    if not isinstance(examples, list):
        raise _invalid(f"JSON Value: {debug_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise _invalid(f"JSON Value: {debug_string(doc)} 'examples' value is an empty array")
    listed = (
        request_input.example_list_with_context if context is not _MISSING else request_input.example_list
    ).examples
    for example in examples:
        _example(example, listed.add())
    return name, request_input


_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _example(value: Any, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject: one feature per member, its kind chosen by its first value."""
    if not isinstance(value, JsonObject):
        raise _invalid(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value:
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)  # a repeated name: the last one stays


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature."""
    if value is True or value is False:
        kind, item = "int64_list", int(value)
    elif isinstance(value, JsonObject):
        if not _is_base64_object(value):
            raise _invalid(f"Feature: {name} has element with unexpected JSON type: Object")
        kind, item = "bytes_list", None
    elif isinstance(value, str):
        kind, item = "bytes_list", value.encode("utf-8", "surrogateescape")
    elif isinstance(value, float):
        kind, item = "float_list", value
    elif isinstance(value, int):
        kind, item = "int64_list", value
    else:
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise _invalid(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[current]}")
    if kind == "bytes_list" and item is None:
        item = _decode_base64(value)
    if kind == "int64_list" and item > _INT64[1]:
        raise _invalid(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    if kind == "float_list":
        with np.errstate(over="ignore"):
            item = float(np.float32(item))  # GetFloat()
    getattr(feature, kind).value.append(item)


# -- answers ------------------------------------------------------------------------------------------------------


def write_decimal(values: np.ndarray) -> list[str]:
    """WriteDecimal for every element (float32 or float64): TF Serving's text of each number.

    absl::StrCat's six significant digits when they read back to the same value, else nine
    (float) or seventeen (double) digits; ``.0`` after a whole number; ``NaN``, ``Infinity``.
    """
    flat = np.asarray(values).ravel()
    precise = ".9g" if flat.dtype == np.float32 else ".17g"
    texts = [format(number, "g") for number in flat.tolist()]
    if texts:
        with np.errstate(over="ignore", invalid="ignore"):
            back = np.array(texts, dtype=np.float64).astype(flat.dtype)
        redo = np.flatnonzero((back != flat) & ~np.isnan(flat))
        numbers = flat.tolist()
        for index in redo.tolist():
            texts[index] = format(numbers[index], precise)
    for index, text in enumerate(texts):
        if text in ("nan", "-nan"):
            texts[index] = "NaN"
        elif text in ("inf", "-inf"):
            texts[index] = "Infinity" if text == "inf" else "-Infinity"
        elif "." not in text and "e" not in text:
            texts[index] = text + ".0"
    return texts


def _string_token(item: bytes | str, as_bytes: bool) -> str:
    if isinstance(item, str):
        item = item.encode("utf-8", "surrogateescape")
    if as_bytes:
        return '{"b64": "' + base64.b64encode(item).decode("ascii") + '"}'
    # TF Serving writes the bytes as they are; bytes that are not UTF-8 would not be JSON, so they are replaced.
    return _safe_json(item.decode("utf-8", "replace"))


def _safe_json(text: str) -> str:
    """A JSON string with ``<``, ``>`` and ``&`` escaped, as every JSON answer of the gateway has them."""
    return html_safe(json.dumps(text))


def _tokens(name: str, value: np.ndarray) -> list[str]:
    """AddSingleValueAndAdvance for every element of one output, in C order."""
    kind = value.dtype
    if value.size == 0:
        return []
    if kind == np.float32 or kind == np.float64:
        return write_decimal(value)
    if kind.kind in "iu" and kind in (np.int8, np.int16, np.int32, np.uint8, np.int64, np.uint32, np.uint64):
        return [str(number) for number in value.ravel().tolist()]
    if kind == np.bool_:
        return ["true" if item else "false" for item in value.ravel().tolist()]
    if kind.kind in "OSU":
        as_bytes = name.endswith(BYTES_SUFFIX)
        return [_string_token(item, as_bytes) for item in value.ravel().tolist()]
    raise _invalid(f"Failed to write JSON value for tensor type: {_numpy_type_string(kind)}")


def _numpy_type_string(dtype: np.dtype) -> str:
    return {"float16": "half"}.get(dtype.name, dtype.name)


def _nest(tokens: list[str], shape: Sequence[int]) -> str:
    """The JSON text of a tensor of ``shape`` whose elements' texts are ``tokens`` (C order)."""
    if not shape:
        return tokens[0]
    if math.prod(shape) == 0:
        zero = list(shape).index(0)
        inner = "[]"
        for size in reversed(shape[:zero]):
            inner = "[" + ", ".join([inner] * size) + "]"
        return inner
    level = tokens
    for size in reversed(shape):
        level = ["[" + ", ".join(level[i : i + size]) + "]" for i in range(0, len(level), size)]
    return level[0]


def predict_response(outputs: Mapping[str, np.ndarray], response_format: PredictFormat) -> str:
    """MakeJsonFromTensors: ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar), as JSON text."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if response_format is PredictFormat.COLUMNAR:
        texts = {name: _nest(_tokens(name, outputs[name]), outputs[name].shape) for name in names}
        if len(names) == 1:
            return '{"outputs": ' + texts[names[0]] + "}"
        members = ", ".join(f"{_safe_json(name)}: {texts[name]}" for name in names)
        return '{"outputs": {' + members + "}}"
    batch = -1
    for name in names:
        value = outputs[name]
        if value.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and value.shape[0] != batch:
            raise _invalid(f"Tensor name: {name} has inconsistent batch size: {value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    rows: dict[str, list[str]] = {}
    for name in names:
        value = outputs[name]
        tokens = _tokens(name, value)
        per_item = math.prod(value.shape[1:])
        rows[name] = [_nest(tokens[i * per_item : (i + 1) * per_item], value.shape[1:]) for i in range(batch)]
    if len(names) == 1:
        items = rows[names[0]]
    else:
        items = ["{" + ", ".join(f"{_safe_json(name)}: {rows[name][i]}" for name in names) + "}" for i in range(batch)]
    return '{"predictions": [' + ", ".join(items) + "]}"


def classification_json(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult: ``{"results": [[[label, score], ...], ...]}``."""
    if not result.classifications:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        classes = list(classifications.classes)
        scores = write_decimal(np.array([item.score for item in classes], dtype=np.float32))
        pairs = (f"[{_string_token(item.label, False)}, {score}]" for item, score in zip(classes, scores, strict=True))
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult: ``{"results": [value, ...]}``."""
    if not result.regressions:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    values = write_decimal(np.array([item.value for item in result.regressions], dtype=np.float32))
    return '{"results": [' + ", ".join(values) + "]}"
