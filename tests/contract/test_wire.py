"""Tests for app.serving.wire: hand-written PredictRequest bytes and the direct PredictResponse reader.

Every case is checked against the protobuf route it replaces: our request bytes
parse to the message ``to_tensor_proto`` + ``CopyFrom`` builds (byte for byte, for
one input), and our response reader gives what ``PredictResponse.FromString`` +
``from_tensor_proto`` give, arrays or errors alike.
"""

from __future__ import annotations

import math
import tracemalloc
from concurrent import futures

import grpc
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from google.protobuf import message
from hypothesis import given
from hypothesis import strategies as st

from app.errors import BadInput, ModelFailure
from app.serving import tensors, wire
from app.serving.base import ModelRef
from app.serving.grpc_backend import GrpcBackend, model_spec
from app.serving.protos.tensorflow.core.framework import types_pb2
from app.serving.protos.tensorflow_serving.apis import model_pb2, predict_pb2
from app.serving.tensors import DTYPES, from_tensor_proto, to_tensor_proto
from tests.support.double import TFServingDouble
from tests.support.tensor_cases import (
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

SPEC = model_pb2.ModelSpec(name="ugatit_selfie2anime", signature_name="serving_default")


def half_or_arrays(row: tensors.DtypeRow, shape=SHAPES, *, byteorder: str = "=") -> st.SearchStrategy:
    """Arrays of ``row``'s dtype; float16 ones drawn as 16-bit patterns viewed as halves.

    Every half comes out (NaN payloads, infinities, subnormals, -0.0) and no draw is thrown away:
    hypothesis' own float16 elements discard so many draws that its filter health check failed the
    DT_HALF cases about one run in four.
    """
    if row.datatype != types_pb2.DT_HALF:
        if byteorder == "=":
            return arrays(row, shape)
        return hnp.arrays(row.dtype.newbyteorder(byteorder), shape)
    bits = np.dtype("u2").newbyteorder(byteorder)
    return hnp.arrays(bits, shape).map(lambda drawn: drawn.view(np.dtype("f2").newbyteorder(byteorder)))


def protobuf_request(spec: model_pb2.ModelSpec, inputs: dict) -> predict_pb2.PredictRequest:
    """The request the protobuf route builds (what GrpcBackend sent before the wire codec)."""
    request = predict_pb2.PredictRequest(model_spec=spec)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(to_tensor_proto(value))
    return request


def response_bytes(**outputs) -> bytes:
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = 3
    for alias, proto in outputs.items():
        response.outputs[alias].ParseFromString(proto.SerializeToString())  # TensorFlow's TensorProto or ours
    return response.SerializeToString()


def reference_decode(data: bytes) -> dict[str, np.ndarray]:
    response = predict_pb2.PredictResponse.FromString(data)
    return {alias: from_tensor_proto(proto) for alias, proto in response.outputs.items()}


def fast_decode(data: bytes) -> dict[str, np.ndarray]:
    """The fast reader alone, with no fallback: fails the test if it would hand the bytes to protobuf."""
    return {alias: tensor.array() for alias, tensor in wire._read_response(data).items()}


def assert_same_outputs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert actual.keys() == expected.keys()
    for alias, value in expected.items():
        assert_same(actual[alias], value)
        if value.dtype != object:
            assert actual[alias].tobytes() == value.tobytes()  # bit for bit: NaN payloads, -0.0
        assert actual[alias].flags.writeable == value.flags.writeable, alias
        assert actual[alias].flags.aligned


def outcome(decode, data: bytes) -> tuple[str, object]:
    """What a decoder does with ``data``: its arrays, or its error's type and message."""
    try:
        return "ok", decode(data)
    except (BadInput, message.DecodeError) as exc:
        return type(exc).__name__, str(exc) if isinstance(exc, BadInput) else ""


def assert_same_outcome(data: bytes) -> None:
    ours, theirs = outcome(wire.decode_predict_response, data), outcome(reference_decode, data)
    assert ours[0] == theirs[0], (ours, theirs)
    if ours[0] == "ok":
        assert_same_outputs(ours[1], theirs[1])
    else:
        assert ours[1] == theirs[1]


# --- requests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_request_bytes_are_the_protobuf_routes(row: tensors.DtypeRow, data: st.DataObject) -> None:
    x = data.draw(half_or_arrays(row))
    reference = protobuf_request(SPEC, {"input_images": x})
    ours = wire.encode_predict_request(SPEC, {"input_images": x})
    assert type(ours) is bytes  # what gRPC's identity serializer must be handed
    assert ours == reference.SerializeToString()
    assert predict_pb2.PredictRequest.FromString(ours) == reference


@pytest.mark.parametrize("row", NUMERIC_ROWS, ids=_id)
@SETTINGS
@given(data=st.data())
def test_request_of_views_and_big_endian_arrays(row: tensors.DtypeRow, data: st.DataObject) -> None:
    big = data.draw(half_or_arrays(row, byteorder=">"))
    view = big.T[..., ::-1] if big.ndim else big
    inputs = {"big": big, "view": view, "scalar": big.ravel()[:1].reshape(())} if big.size else {"big": big}
    ours = predict_pb2.PredictRequest.FromString(wire.encode_predict_request(SPEC, inputs))
    assert ours == protobuf_request(SPEC, inputs)
    assert_same(from_tensor_proto(ours.inputs["big"]), big.astype(row.dtype))


@pytest.mark.parametrize(
    "ref",
    [
        ModelRef("latent_search_model"),
        ModelRef("latent_search_model", version=7),
        ModelRef("latent_search_model", label="canary", signature="other"),
    ],
    ids=str,
)
def test_request_with_several_inputs_and_model_specs(ref: ModelRef) -> None:
    inputs = {
        "target_latent": np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64),
        "k_num": np.int32(5),
        "names": np.array(["gallery", "visage é"], dtype=object),
        "größe": np.zeros((0, 3), dtype=np.uint8),
        "mask": np.array([[True, False]]),
    }
    spec = model_spec(ref)
    ours = predict_pb2.PredictRequest.FromString(wire.encode_predict_request(spec, inputs))
    assert ours == protobuf_request(spec, inputs)
    assert ours.model_spec == spec


def test_request_without_inputs_and_python_values() -> None:
    assert wire.encode_predict_request(SPEC, {}) == predict_pb2.PredictRequest(model_spec=SPEC).SerializeToString()
    for value in (2.5, [[1, 2], [3, 4]], "text", True, np.float16(-0.0)):
        ours = wire.encode_predict_request(SPEC, {"a": value})
        assert ours == protobuf_request(SPEC, {"a": value}).SerializeToString()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros(2, dtype=np.complex64), "unsupported"),
        (np.array([b"ok", 3], dtype=object), "only str and bytes"),
        (np.array(["lone \ud800"], dtype=object), "UTF-8"),
    ],
    ids=["complex", "int-in-strings", "surrogate"],
)
def test_request_bad_tensors_are_bad_input(value: np.ndarray, match: str) -> None:
    with pytest.raises(BadInput, match=match):
        wire.encode_predict_request(SPEC, {"x": value})
    with pytest.raises(BadInput, match=match):
        to_tensor_proto(value)


def test_request_copies_a_big_array_once() -> None:
    """The array's bytes are copied straight into the message: peak extra memory is the message alone."""
    image = np.random.default_rng(0).integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        data = wire.encode_predict_request(SPEC, {"input_images": image})
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(data) > image.nbytes
    assert peak < image.nbytes * 1.1 + (64 << 10), peak  # tobytes() and then a join would peak at 2x


# --- responses: tensor_content --------------------------------------------------------------------


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_response_content_form_matches_from_tensor_proto(row: tensors.DtypeRow, data: st.DataObject, tf) -> None:
    x = data.draw(half_or_arrays(row))
    y = data.draw(half_or_arrays(row, (2, 3)))
    encoded = response_bytes(ours=to_tensor_proto(x), tfs=tf.make_tensor_proto(y))
    assert_same_outputs(fast_decode(encoded), reference_decode(encoded))
    assert_same_outputs(wire.decode_predict_response(encoded), reference_decode(encoded))


def test_response_content_is_an_aligned_read_only_view() -> None:
    x = np.arange(4096, dtype=np.float64).reshape(64, 64)
    # Shift the tensor_content's offset by every amount, so some views start misaligned.
    kinds = set()
    for pad in range(8):
        data = response_bytes(**{"p" * (pad + 1): to_tensor_proto(x)})
        (out,) = wire.decode_predict_response(data).values()
        assert_same(out, x)
        assert out.flags.aligned and not out.flags.writeable
        if np.shares_memory(out, np.frombuffer(data, np.uint8)):
            kinds.add("view")
        else:
            assert out.flags.owndata  # the misaligned case: one copy
            kinds.add("copy")
    assert kinds == {"view", "copy"}


# --- responses: the *_val forms (what TF Serving sends by default) -------------------------------


@pytest.mark.parametrize("row", DTYPES, ids=_id)
@SETTINGS
@given(data=st.data())
def test_response_val_forms_match_from_tensor_proto(row: tensors.DtypeRow, data: st.DataObject) -> None:
    shape = data.draw(SHAPES)
    count = data.draw(st.integers(0, math.prod(shape)))  # fewer values than elements: TF's padding rule
    values = data.draw(half_or_arrays(row, count))
    proto = make_proto(row.datatype, shape)
    put_values(proto, row, values)
    encoded = response_bytes(out=proto)
    decoded = fast_decode(encoded)
    assert_same_outputs(decoded, reference_decode(encoded))
    assert_same(decoded["out"], padded(values, row, shape))


@pytest.mark.parametrize("row", DTYPES, ids=_id)
def test_response_val_extremes(row: tensors.DtypeRow) -> None:
    """Every value's varint length, from one byte to ten (negative ints), and NaN/inf floats."""
    values = sample_values(row, 6)
    proto = make_proto(row.datatype, (2, 3))
    put_values(proto, row, values)
    proto.tensor_shape.SetInParent()
    scalar = make_proto(row.datatype, ())
    scalar.tensor_shape.SetInParent()  # as TF Serving's AsProtoField writes a scalar: an empty shape
    put_values(scalar, row, values[:1])
    encoded = response_bytes(full=proto, scalar=scalar)
    assert_same_outputs(fast_decode(encoded), reference_decode(encoded))


def test_response_uint8_image_in_int_val() -> None:
    """A [1,256,256,3] uint8 image as TF Serving sends it: 196608 varints of one and two bytes."""
    image = np.random.default_rng(1).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    proto = make_proto(types_pb2.DT_UINT8, image.shape)
    proto.int_val.extend(image.ravel().tolist())
    decoded = fast_decode(response_bytes(output_images=proto))
    assert_same(decoded["output_images"], image)
    assert decoded["output_images"].flags.writeable


# --- responses: errors and what the fast reader leaves to protobuf --------------------------------


def _bad_protos() -> dict[str, object]:
    return {
        "too-many-values": make_proto(types_pb2.DT_FLOAT, (2,), float_val=[1, 2, 3]),
        "content-length": make_proto(types_pb2.DT_INT32, (2, 3), tensor_content=b"\x00" * 23),
        "unsupported-dtype": make_proto(types_pb2.DT_COMPLEX64, (1,), scomplex_val=[1, 2]),
        "bfloat16-content": make_proto(types_pb2.DT_BFLOAT16, (1,), tensor_content=b"\x00\x00"),
        "negative-dim": make_proto(types_pb2.DT_FLOAT, (-1, 3)),
        "uint8-range": make_proto(types_pb2.DT_UINT8, (2,), int_val=[3, 256]),
        "int8-negative-range": make_proto(types_pb2.DT_INT8, (2,), int_val=[-129]),
        "half-bits": make_proto(types_pb2.DT_HALF, (1,), half_val=[-1]),
        "string-content": make_proto(types_pb2.DT_STRING, (1,), tensor_content=b"\x03abc"),
        "no-dtype": make_proto(types_pb2.DT_INVALID, (1,)),
    }


@pytest.mark.parametrize("case", list(_bad_protos()), ids=str)
def test_bad_tensors_raise_the_same_bad_input(case: str) -> None:
    encoded = response_bytes(good=to_tensor_proto(np.ones(3, np.float32)), bad=_bad_protos()[case])
    with pytest.raises(BadInput) as theirs:
        reference_decode(encoded)
    with pytest.raises(BadInput) as ours:
        wire.decode_predict_response(encoded)
    assert str(ours.value) == str(theirs.value)


def _key(field: int, wire_type: int) -> bytes:
    return wire._varint(field << 3 | wire_type)


def _entry(alias: bytes, tensor: bytes) -> bytes:
    entry = b"\x0a" + wire._varint(len(alias)) + alias + b"\x12" + wire._varint(len(tensor)) + tensor
    return b"\x0a" + wire._varint(len(entry)) + entry


FLOAT_HEAD = b"\x08\x01\x12\x04\x12\x02\x08\x03"  # dtype DT_FLOAT, shape [3]
ODD_RESPONSES = {
    # unpacked floats (legal protobuf, not what TF Serving writes): left to protobuf
    "unpacked-floats": _entry(b"y", FLOAT_HEAD + b"".join(b"\x2d" + np.float32(v).tobytes() for v in (1, 2, 3))),
    # packed floats in two runs: they concatenate
    "packed-in-two-runs": _entry(b"y", FLOAT_HEAD + b"\x2a\x04" + b"\x00" * 4 + b"\x2a\x08" + b"\x01" * 8),
    # a tensor_shape given twice: its dims add up
    "shape-twice": _entry(b"y", b"\x08\x03\x12\x04\x12\x02\x08\x01\x12\x04\x12\x02\x08\x02\x3a\x02\x05\x07"),
    "unknown-rank": _entry(b"y", b"\x08\x01\x12\x02\x18\x01"),
    "dim-with-name": _entry(b"y", b"\x08\x03\x12\x07\x12\x05\x08\x01\x12\x01n\x3a\x01\x09"),
    "version-number": _entry(b"y", b"\x08\x03\x18\x05\x3a\x01\x09"),
    "unknown-tensor-field": _entry(b"y", b"\x08\x03\xa8\x06\x01\x3a\x01\x09"),
    "unknown-top-level-field": _entry(b"y", b"\x08\x03\x3a\x01\x09") + b"\x18\x01",
    "repeated-key-last-wins": _entry(b"y", b"\x08\x03\x3a\x01\x01") + _entry(b"y", b"\x08\x03\x3a\x01\x02"),
    "entry-without-value": b"\x0a\x03\x0a\x01y",
    "entry-without-key": b"\x0a\x07\x12\x05\x08\x03\x3a\x01\x09",
    "unpacked-ints": _entry(b"y", b"\x08\x03\x12\x04\x12\x02\x08\x02\x38\x09\x38\x01"),
    "content-twice-last-wins": _entry(b"y", b"\x08\x03\x12\x04\x12\x02\x08\x01\x22\x04AAAA\x22\x04BBBB"),
    "empty-content-then-values": _entry(b"y", b"\x08\x03\x12\x04\x12\x02\x08\x01\x22\x00\x3a\x01\x09"),
    "enum-beyond-int32": _entry(b"y", b"\x08" + wire._varint((1 << 32) + 3) + b"\x3a\x01\x09"),
    "negative-enum": _entry(b"y", b"\x08" + wire._varint(-3) + b"\x3a\x01\x09"),
    "huge-dim": _entry(b"y", b"\x08\x01\x12\x0d\x12\x0b\x08" + wire._varint(-5)),
    "ten-byte-varint-ints": _entry(b"y", b"\x08\x03\x12\x04\x12\x02\x08\x02\x3a\x0b\x01" + wire._varint(-1)),
    "eleven-byte-varint": _entry(b"y", b"\x08\x03\x3a\x0b" + b"\xff" * 10 + b"\x01"),
    "cut-off-varint": _entry(b"y", b"\x08\x03\x3a\x02\x05\x87"),
    "truncated": _entry(b"y", FLOAT_HEAD + b"\x2a\x0c" + b"\x00" * 12)[:-3],
    "float-run-not-a-multiple-of-4": _entry(b"y", FLOAT_HEAD + b"\x2a\x05" + b"\x00" * 5),
    "non-utf8-key": _entry(b"\xff", b"\x08\x03\x3a\x01\x09"),
    "non-utf8-dim-name": _entry(b"y", b"\x08\x03\x12\x07\x12\x05\x08\x01\x12\x01\xff\x3a\x01\x09"),
    "bad-model-spec": b"\x12\x03\x0a\x05a",
    "group-wire-type": b"\x0b\x0c",
    "field-zero": b"\x00\x01",
    "not-protobuf": b"\xff\xff\xff\xff",
    "empty": b"",
}


@pytest.mark.parametrize("case", list(ODD_RESPONSES), ids=str)
def test_odd_wire_gives_what_protobuf_gives(case: str) -> None:
    assert_same_outcome(ODD_RESPONSES[case])


@SETTINGS
@given(data=st.data())
def test_damaged_responses_give_what_protobuf_gives(data: st.DataObject) -> None:
    """Cut, corrupt or extend a real response anywhere: the same arrays or the same error as the protobuf route."""
    image = make_proto(types_pb2.DT_UINT8, (2, 3), int_val=[0, 127, 128, 255, 9, 1])
    scores = make_proto(types_pb2.DT_FLOAT, (1, 2), float_val=[0.25, -1.0])
    names = make_proto(types_pb2.DT_STRING, (2,), string_val=[b"a.jpg", "b\u00e9.png".encode()])
    content = to_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3))
    good = bytearray(response_bytes(image=image, scores=scores, names=names, content=content))
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.integers(0, len(good)))
        action = data.draw(st.sampled_from(["cut", "set", "insert"]))
        if action == "cut":
            del good[where:]
        elif action == "set" and where < len(good):
            good[where] = data.draw(st.integers(0, 255))
        else:
            good[where:where] = data.draw(st.binary(min_size=1, max_size=4))
    assert_same_outcome(bytes(good))


# --- the gRPC backend over the wire codec --------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    import tensorflow

    return tensorflow


@pytest.mark.parametrize("response_form", ["field", "content"])
def test_grpc_backend_reads_both_response_forms(config_path, response_form: str) -> None:
    with TFServingDouble(config_path, poll_interval=0, response_form=response_form) as double:
        backend = GrpcBackend(double.address)
        try:
            x = np.array([0.0, 1.0, -4.0, 10.5], dtype=np.float32)
            np.testing.assert_allclose(backend.predict(ModelRef("half_plus"), {"x": x})["y"], 0.5 * x + 3.0)
            words = backend.predict(ModelRef("words"), {"text": np.array([b"face", b"a\x00b"], dtype=object)})
            assert list(words["upper"]) == [b"FACE", b"A\x00B"]
            assert words["length"].dtype == np.int32 and list(words["length"]) == [4, 3]
            index = backend.predict(ModelRef("vocabulary"), {"word": np.array([b"gallery", b"nobody"], dtype=object)})
            assert index["index"].dtype == np.int64 and list(index["index"]) == [2, -1]
            empty = backend.predict(ModelRef("identity"), {"x": np.zeros(0, dtype=np.float32)})
            assert empty["y"].shape == (0,)
        finally:
            backend.close()


def test_double_answers_with_val_fields_by_default(config_path) -> None:
    """As TF Serving does (ServerCore's default kAsProtoField): no tensor_content, every value in float_val."""
    from app.serving.protos.tensorflow_serving.apis import prediction_service_pb2_grpc

    with TFServingDouble(config_path, poll_interval=0) as double, grpc.insecure_channel(double.address) as channel:
        request = protobuf_request(model_pb2.ModelSpec(name="half_plus"), {"x": np.arange(5, dtype=np.float32)})
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        y = response.outputs["y"]
        assert not y.tensor_content
        assert list(y.float_val) == [3.0, 3.5, 4.0, 4.5, 5.0]
        with pytest.raises(ValueError, match="response_form"):
            TFServingDouble(config_path, response_form="json")


class GarbageAnsweringServer:
    """A PredictionService that answers every Predict with bytes that are no PredictResponse."""

    def __init__(self, answer: bytes) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: answer)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {"Predict": handler})]
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None).wait()


def test_undecodable_response_is_a_model_failure() -> None:
    server = GarbageAnsweringServer(b"\x0a\xff\xff")
    backend = GrpcBackend(f"127.0.0.1:{server.port}", timeout=5)
    try:
        with pytest.raises(ModelFailure, match="half_plus: TF Serving's PredictResponse does not parse") as info:
            backend.predict(ModelRef("half_plus"), {"x": np.ones(2, np.float32)})
        assert info.value.status_code == 502
    finally:
        backend.close()
        server.close()


def test_string_row_is_read_from_string_val() -> None:
    # Strings never travel as tensor_content; the reader keeps each string_val element's bytes whole.
    proto = make_proto(STRING_ROW.datatype, (3,), string_val=[b"", b"\x00\xff", "\u65e5".encode()])
    assert fast_decode(response_bytes(s=proto))["s"].tolist() == [b"", b"\x00\xff", "\u65e5".encode()]


@pytest.mark.parametrize("version", [None, 0, 1, 7, 2**62])
def test_response_version_is_the_model_specs(version: int | None) -> None:
    response = predict_pb2.PredictResponse()
    response.outputs["y"].CopyFrom(tensors.to_tensor_proto(np.arange(3, dtype=np.float32)))
    response.model_spec.name = "m"
    if version is not None:
        response.model_spec.version.value = version
    assert wire.response_version(response.SerializeToString()) == version
    assert wire.response_version(b"") is None
