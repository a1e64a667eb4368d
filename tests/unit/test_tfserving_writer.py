"""JSON values and numbers as TF Serving writes them: RapidJSON's debug strings in messages, WriteDecimal in answers."""

from __future__ import annotations

import numpy as np

from app.protocols.tfserving_reader import parse
from app.protocols.tfserving_writer import debug_string, write_decimal


def test_debug_strings_are_rapidjsons_pretty_writer():
    doc = parse(b'{"instances": [[1,2],[3,4.5]], "s": "x\\ny", "o": {}, "e": [], "n": null, "f": 1e30, "g": 1e-7}')
    assert debug_string(doc) == (
        '{\n    "instances": [[1, 2], [3, 4.5]],\n    "s": "x\\ny",\n    "o": {},\n    "e": [],\n    "n": null,\n'
        '    "f": 1e30,\n    "g": 1e-7\n}'
    )
    assert debug_string(parse(b"[1.0, NaN, 2]")) == "[1.0, "  # RapidJSON's writer stops at NaN
    long = debug_string(parse(b"[" + b"1234567, " * 100 + b"1]"))
    assert long.startswith("[1234567, ") and 256 <= len(long) < 256 + 10


def test_floats_are_written_as_tf_serving_writes_them():
    texts = write_decimal(np.array([1 / 3, 0.1, 2.0, -0.0, 1e-45, 3.4028235e38], dtype=np.float32))
    assert texts == ["0.333333343", "0.1", "2.0", "-0.0", "1.4013e-45", "3.40282347e+38"]
    assert write_decimal(np.array([1 / 3, 0.1], dtype=np.float64)) == ["0.33333333333333331", "0.1"]
    # Whatever the text, a client reads back the very same value.
    values = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    assert np.array_equal(np.array([float(text) for text in write_decimal(values)], dtype=np.float32), values)
