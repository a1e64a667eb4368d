"""Tests for app.serving.tensors: numpy <-> TensorProto, checked against TensorFlow's own converters."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from app.errors import BadInput
from app.serving import tensors
from app.serving.tensors import DTYPES, datatype_of, from_tensor_proto, numpy_dtype, to_tensor_proto
from tests.support.tensor_cases import (
    ALL_VAL_FIELDS,
    NUMERIC_ROWS,
    SETTINGS,
    SHAPES,
    STRING_ROW,
    _id,
    arrays,
    assert_same,
    make_proto,
    padded,
    put_values,
    sample_values,
)


@pytest.fixture(scope="module")
def tf():
    """TensorFlow itself, as the reference implementation (imported only here: it is slow)."""
    import tensorflow

    return tensorflow


# --- the table ---------------------------------------------------------------------------------


def test_table_covers_tf_serving_dtypes() -> None:
    names = {types_pb2.DataType.Name(row.datatype) for row in DTYPES}
    assert names == {
        "DT_HALF",
        "DT_FLOAT",
        "DT_DOUBLE",
        "DT_INT8",
        "DT_INT16",
        "DT_INT32",
        "DT_INT64",
        "DT_UINT8",
        "DT_UINT16",
        "DT_UINT32",
        "DT_UINT64",
        "DT_BOOL",
        "DT_STRING",
    }
    assert len(names) == len(DTYPES)


@pytest.mark.parametrize("row", DTYPES, ids=_id)
def test_numpy_dtype_and_datatype_of_agree(row: tensors.DtypeRow, tf) -> None:
    assert numpy_dtype(row.datatype) == row.dtype
    assert datatype_of(row.dtype) == row.datatype
    # TensorFlow agrees on the mapping.
    assert np.dtype(tf.dtypes.as_dtype(row.datatype).as_numpy_dtype) == row.dtype
    assert row.field in tensor_pb2.TensorProto.DESCRIPTOR.fields_by_name


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.dtype(np.intc), types_pb2.DT_INT32),
        (np.dtype(np.longlong), types_pb2.DT_INT64),
        (np.dtype(">f4"), types_pb2.DT_FLOAT),
        (np.dtype(">u8"), types_pb2.DT_UINT64),
        (np.dtype("=f2"), types_pb2.DT_HALF),
        (np.dtype(bool), types_pb2.DT_BOOL),
        (np.dtype(object), types_pb2.DT_STRING),
        (np.dtype("S3"), types_pb2.DT_STRING),
        (np.dtype("U5"), types_pb2.DT_STRING),
    ],
)
def test_datatype_of_aliases_byte_orders_and_strings(dtype: np.dtype, expected: int) -> None:
    assert datatype_of(dtype) == expected


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_round_trip(row: tensors.DtypeRow, data: st.DataObject) -> None:
    x = data.draw(arrays(row))
    proto = to_tensor_proto(x)
    assert proto.dtype == row.datatype
    assert [dim.size for dim in proto.tensor_shape.dim] == list(x.shape)
    y = from_tensor_proto(proto)
    assert_same(y, x)
    if row is not STRING_ROW:
        assert y.tobytes() == x.tobytes()  # bit for bit: NaN payloads and -0.0 survive


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_tensorflow_reads_ours_and_we_read_tensorflows(row: tensors.DtypeRow, data: st.DataObject, tf) -> None:
    x = data.draw(arrays(row))
    assert_same(tf.make_ndarray(to_tensor_proto(x)), x)
    # make_tensor_proto writes *_val fields for scalars and one-element tensors, tensor_content otherwise.
    assert_same(from_tensor_proto(tf.make_tensor_proto(x)), x)


@pytest.mark.parametrize("row", NUMERIC_ROWS, ids=_id)
@SETTINGS
@given(data=st.data())
def test_big_endian_and_strided_inputs(row: tensors.DtypeRow, data: st.DataObject) -> None:
    big = data.draw(hnp.arrays(row.dtype.newbyteorder(">"), SHAPES))
    proto = to_tensor_proto(big)
    assert proto.tensor_content == big.astype(row.dtype).tobytes()
    assert_same(from_tensor_proto(proto), big.astype(row.dtype))
    # Non-contiguous views are written in C order.
    view = big.T[..., ::-1] if big.ndim else big
    assert_same(from_tensor_proto(to_tensor_proto(view)), view.astype(row.dtype))


def test_big_endian_float_bytes_are_little_endian() -> None:
    x = np.array([1.0, -2.5], dtype=">f4")
    proto = to_tensor_proto(x)
    assert proto.tensor_content == np.array([1.0, -2.5], dtype="<f4").tobytes()
    assert proto.tensor_content == b"\x00\x00\x80\x3f\x00\x00\x20\xc0"
    assert from_tensor_proto(proto).dtype == np.dtype("<f4")


@pytest.mark.parametrize("row", NUMERIC_ROWS, ids=_id)
def test_numeric_tensors_use_tensor_content(row: tensors.DtypeRow) -> None:
    x = np.ones((2, 3), dtype=row.dtype)
    proto = to_tensor_proto(x)
    assert proto.tensor_content == x.tobytes()
    for name in ALL_VAL_FIELDS:
        assert len(getattr(proto, name)) == 0, name
    assert {field.name for field, _ in proto.ListFields()} == {"dtype", "tensor_shape", "tensor_content"}


def test_scalars_and_python_values() -> None:
    proto = to_tensor_proto(3.5)
    assert proto.dtype == types_pb2.DT_DOUBLE
    assert len(proto.tensor_shape.dim) == 0
    assert from_tensor_proto(proto).shape == ()
    assert from_tensor_proto(proto)[()] == 3.5
    assert to_tensor_proto(True).dtype == types_pb2.DT_BOOL
    assert to_tensor_proto(np.int8(-3)).dtype == types_pb2.DT_INT8
    assert_same(from_tensor_proto(to_tensor_proto([[1, 2], [3, 4]])), np.array([[1, 2], [3, 4]]))
    assert list(from_tensor_proto(to_tensor_proto("héllo")).flat) == ["héllo".encode()]


def test_tensor_content_result_is_read_only_view_and_val_result_is_writable() -> None:
    fast = from_tensor_proto(to_tensor_proto(np.arange(6, dtype=np.float32).reshape(2, 3)))
    assert not fast.flags.writeable
    slow = from_tensor_proto(make_proto(types_pb2.DT_FLOAT, (2, 3), float_val=[1.0]))
    assert slow.flags.writeable


def test_re_encoding_a_decoded_array() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    y = from_tensor_proto(to_tensor_proto(x))
    assert to_tensor_proto(y).tensor_content == x.tobytes()
    assert to_tensor_proto(y[1:]).tensor_content == x[1:].tobytes()
    assert to_tensor_proto(y[:, ::2]).tensor_content == x[:, ::2].tobytes()
    assert to_tensor_proto(y.view(np.int32)).tensor_content == x.tobytes()
    assert to_tensor_proto(y.T).tensor_content == x.T.tobytes()


# --- strings -------------------------------------------------------------------------------------

AWKWARD = ["", "plain", "héllo wörld", "日本語", "emoji 🙂", "nul\x00inside", "\x00lead"]


def test_str_array_is_utf8_encoded() -> None:
    x = np.array(AWKWARD)  # dtype '<U…'
    proto = to_tensor_proto(x.reshape(7, 1))
    assert proto.dtype == types_pb2.DT_STRING
    assert list(proto.string_val) == [s.encode("utf-8") for s in AWKWARD]
    assert not proto.tensor_content
    y = from_tensor_proto(proto)
    assert y.dtype == np.dtype(object)
    assert y.shape == (7, 1)
    assert y.ravel().tolist() == [s.encode("utf-8") for s in AWKWARD]


def test_bytes_and_mixed_object_arrays() -> None:
    raw = [b"", b"\x00", b"a\x00b", b"\xff\xfe binary", "ünïcode".encode()]
    assert from_tensor_proto(to_tensor_proto(np.array(raw, dtype=object))).tolist() == raw
    # numpy's fixed-width 'S' arrays keep embedded NULs (they drop trailing ones themselves).
    fixed = np.array([b"a\x00b", b"\x00c", b"xyz"])
    assert fixed.dtype.kind == "S"
    assert from_tensor_proto(to_tensor_proto(fixed)).tolist() == [b"a\x00b", b"\x00c", b"xyz"]
    mixed = np.array(["é", b"\xe9", np.str_("x"), np.bytes_(b"y")], dtype=object)
    assert list(to_tensor_proto(mixed).string_val) == [b"\xc3\xa9", b"\xe9", b"x", b"y"]


@SETTINGS
@given(x=hnp.arrays(object, SHAPES, elements=st.text(max_size=6)))
def test_str_round_trip(x: np.ndarray) -> None:
    y = from_tensor_proto(to_tensor_proto(x))
    assert y.shape == x.shape
    assert y.ravel().tolist() == [s.encode("utf-8") for s in x.ravel().tolist()]


@SETTINGS
@given(x=hnp.arrays(hnp.unicode_string_dtypes(max_len=4), SHAPES))
def test_unicode_dtype_round_trip(x: np.ndarray, tf) -> None:
    expected = [s.encode("utf-8") for s in x.ravel().tolist()]
    assert from_tensor_proto(to_tensor_proto(x)).ravel().tolist() == expected
    assert tf.make_ndarray(to_tensor_proto(x)).ravel().tolist() == expected


# --- the *_val forms -----------------------------------------------------------------------------

VAL_CASES = {
    # name: (shape, how many values the proto carries)
    "exact": ((2, 3), 6),
    "scalar": ((), 1),
    "broadcast_one": ((2, 3), 1),
    "zero_values": ((2, 3), 0),
    "repeat_last": ((2, 3), 4),
    "empty_tensor": ((0, 3), 0),
}


@pytest.mark.parametrize("case", VAL_CASES, ids=str)
@pytest.mark.parametrize("row", DTYPES, ids=_id)
def test_val_fields_decode_like_tensorflow(row: tensors.DtypeRow, case: str, tf) -> None:
    shape, count = VAL_CASES[case]
    values = sample_values(row, count)
    proto = make_proto(row.datatype, shape)
    put_values(proto, row, values)
    ours = from_tensor_proto(proto)
    expected = padded(values, row, shape)
    assert_same(ours, expected)
    reference = tf.make_ndarray(proto)
    if row is STRING_ROW and count == 0 and math.prod(shape):
        # TF pads an empty string_val with str "" rather than bytes; we give b"" like the wire does.
        assert reference.ravel().tolist() == [""] * math.prod(shape)
        assert ours.ravel().tolist() == [b""] * math.prod(shape)
    else:
        assert_same(ours, reference.astype(row.dtype))


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_val_fields_any_length(row: tensors.DtypeRow, data: st.DataObject, tf) -> None:
    shape = data.draw(SHAPES)
    count = data.draw(st.integers(0, math.prod(shape)))
    values = data.draw(arrays(row, count))
    proto = make_proto(row.datatype, shape)
    put_values(proto, row, values)
    ours = from_tensor_proto(proto)
    assert_same(ours, padded(values, row, shape))
    if row is not STRING_ROW or count or not math.prod(shape):
        assert_same(ours, tf.make_ndarray(proto).astype(row.dtype))


def test_tensor_content_wins_over_val_fields() -> None:
    proto = make_proto(types_pb2.DT_INT32, (2,), tensor_content=np.array([5, 6], "<i4").tobytes(), int_val=[1])
    assert_same(from_tensor_proto(proto), np.array([5, 6], dtype=np.int32))


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "name"),
    [
        (types_pb2.DT_BFLOAT16, "DT_BFLOAT16"),
        (types_pb2.DT_COMPLEX64, "DT_COMPLEX64"),
        (types_pb2.DT_RESOURCE, "DT_RESOURCE"),
        (types_pb2.DT_FLOAT_REF, "DT_FLOAT_REF"),
        (types_pb2.DT_INVALID, "DT_INVALID"),
        (999, "999"),
    ],
)
def test_unsupported_datatype(datatype: int, name: str) -> None:
    with pytest.raises(BadInput, match=name):
        numpy_dtype(datatype)
    with pytest.raises(BadInput, match=name):
        from_tensor_proto(make_proto(datatype, (1,), tensor_content=b"\x00" * 8))


@pytest.mark.parametrize(
    "dtype",
    [
        np.dtype(np.complex64),
        np.dtype(np.complex128),
        np.dtype("M8[s]"),
        np.dtype("m8[ms]"),
        np.dtype(np.longdouble),
        np.dtype([("a", "<i4")]),
        np.dtype("V4"),
    ],
    ids=str,
)
def test_unsupported_numpy_dtype(dtype: np.dtype) -> None:
    if dtype == np.dtype(np.float64):  # longdouble is plain double on some platforms
        pytest.skip("longdouble is float64 here")
    with pytest.raises(BadInput, match="unsupported"):
        datatype_of(dtype)
    with pytest.raises(BadInput, match="unsupported"):
        to_tensor_proto(np.zeros(2, dtype=dtype))


@pytest.mark.parametrize("item", [1, 2.5, None, ["nested"]], ids=repr)
def test_object_array_of_non_strings(item: object) -> None:
    x = np.empty(2, dtype=object)
    x[:] = [b"ok", item]
    with pytest.raises(BadInput, match="only str and bytes"):
        to_tensor_proto(x)


def test_unencodable_str() -> None:
    with pytest.raises(BadInput, match="UTF-8"):
        to_tensor_proto(np.array(["ok", "lone \ud800 surrogate"], dtype=object))


@pytest.mark.parametrize("row", DTYPES, ids=_id)
def test_more_values_than_elements(row: tensors.DtypeRow) -> None:
    proto = make_proto(row.datatype, (2,))
    put_values(proto, row, sample_values(row, 3))
    with pytest.raises(BadInput, match=f"{row.field} has 3 values"):
        from_tensor_proto(proto)
    scalar = make_proto(row.datatype, ())
    put_values(scalar, row, sample_values(row, 2))
    with pytest.raises(BadInput, match="only 1 elements"):
        from_tensor_proto(scalar)


@pytest.mark.parametrize("row", NUMERIC_ROWS, ids=_id)
@pytest.mark.parametrize("delta", [-1, 1, 64])
def test_tensor_content_of_wrong_length(row: tensors.DtypeRow, delta: int) -> None:
    size = 6 * row.dtype.itemsize + delta
    proto = make_proto(row.datatype, (2, 3), tensor_content=b"\x01" * size)
    with pytest.raises(BadInput, match=f"tensor_content has {size} bytes"):
        from_tensor_proto(proto)


def test_tensor_content_for_a_zero_size_shape() -> None:
    with pytest.raises(BadInput, match="tensor_content has 4 bytes"):
        from_tensor_proto(make_proto(types_pb2.DT_FLOAT, (0, 3), tensor_content=b"\x00" * 4))


def test_string_tensor_content_is_rejected() -> None:
    with pytest.raises(BadInput, match="string_val"):
        from_tensor_proto(make_proto(types_pb2.DT_STRING, (1,), tensor_content=b"\x03abc"))


def test_negative_dim() -> None:
    with pytest.raises(BadInput, match="negative"):
        from_tensor_proto(make_proto(types_pb2.DT_FLOAT, (-1, 3)))


def test_unknown_rank() -> None:
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    )
    with pytest.raises(BadInput, match="unknown rank"):
        from_tensor_proto(proto)


@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (types_pb2.DT_INT8, 128),
        (types_pb2.DT_INT8, -129),
        (types_pb2.DT_UINT8, 256),
        (types_pb2.DT_UINT8, -1),
        (types_pb2.DT_INT16, 40000),
        (types_pb2.DT_UINT16, 65536),
        (types_pb2.DT_UINT16, -1),
    ],
)
def test_narrow_int_val_out_of_range(datatype: int, value: int) -> None:
    with pytest.raises(BadInput, match="outside the range"):
        from_tensor_proto(make_proto(datatype, (2,), int_val=[0, value]))


@pytest.mark.parametrize("bits", [-1, 0x10000])
def test_half_val_out_of_range(bits: int) -> None:
    with pytest.raises(BadInput, match="half_val"):
        from_tensor_proto(make_proto(types_pb2.DT_HALF, (1,), half_val=[bits]))
