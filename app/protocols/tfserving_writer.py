"""JSON values and numbers as TF Serving writes them: the floats of its answers, and values in its messages.

- :func:`write_decimal`: WriteDecimal of util/json_tensor.cc, the text of every float in an answer;
- :func:`json_type` and :func:`debug_string`: what TF Serving's messages call a JSON value and how they
  print it (RapidJSON's type names and PrettyWriter, cut near 256 bytes).
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import numpy as np

from app.protocols.tfserving_reader import JsonObject

__all__ = ["debug_string", "json_type", "write_decimal"]


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


# -- what a value is called in messages, and how it is printed ------------------------------------------------


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
