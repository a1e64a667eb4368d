"""Benchmark of the tensor codec: the gateway's wire codec against TensorFlow's tf.make_tensor_proto / tf.make_ndarray.

Issue #6's target: the codec is at least 1.5x faster than the tf.make_* helpers both
ways, for a ``[1,256,256,3]`` float32 tensor (a face crop) and a ``[1,1024,1024,3]``
uint8 tensor (a photo). One run measures, side by side:

encode   ``ours``    array -> serialized PredictRequest bytes (``app.serving.wire``, what GrpcBackend sends)
         ``tf``      ``tf.make_tensor_proto`` -> ``request.inputs[...].CopyFrom`` -> ``SerializeToString``
         ``before``  the gateway's previous route: ``to_tensor_proto`` -> ``CopyFrom`` -> ``SerializeToString``
proto    ``ours`` = ``to_tensor_proto``, ``tf`` = ``tf.make_tensor_proto`` (a TensorProto object; GrpcBackend no
         longer builds one, shown for honesty: protobuf's setter copies the bytes either way)
decode   ``ours``    response bytes -> array (``app.serving.wire``, what GrpcBackend reads)
         ``tf``      ``PredictResponse.FromString`` -> ``tf.make_ndarray``
         ``before``  ``PredictResponse.FromString`` -> ``from_tensor_proto``
         each for both response forms: ``content`` (``tensor_content``) and ``field`` (every value in the
         ``*_val`` field: what TF Serving answers by default, ``Tensor::AsProtoField``).

All methods run in one process in interleaved repetitions (each repetition times every method
once, in a shuffled order), so noise from other work on the machine falls on all of them alike;
the table gives p50/p10/p90 and the ratio tf/ours of the medians.

    .venv/bin/python -m bench.codec                            # full run, prints the table
    .venv/bin/python -m bench.codec --json bench/results/codec.json
    .venv/bin/python -m bench.codec --smoke                    # a few repetitions: checks the script works
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2, predict_pb2  # noqa: E402

from app.serving import tensors, wire  # noqa: E402
from app.serving.protos.tensorflow_serving.apis import model_pb2 as gateway_model_pb2  # noqa: E402
from app.serving.protos.tensorflow_serving.apis import predict_pb2 as gateway_predict_pb2  # noqa: E402

TARGET = 1.5
ALIAS = "input_images"
SPEC = model_pb2.ModelSpec(name="ugatit_selfie2anime", signature_name="serving_default")
# The "before" routes use the gateway's own message classes (app.serving.protos), as GrpcBackend would.
GATEWAY_SPEC = gateway_model_pb2.ModelSpec(name=SPEC.name, signature_name=SPEC.signature_name)


def sample_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "float32[1,256,256,3]": rng.standard_normal((1, 256, 256, 3), dtype=np.float32),
        "uint8[1,1024,1024,3]": rng.integers(0, 256, (1, 1024, 1024, 3), dtype=np.uint8),
    }


# -- the routes -----------------------------------------------------------------------------------


def encode_ours(x: np.ndarray) -> bytes:
    return wire.encode_predict_request(SPEC, {ALIAS: x})


def encode_tf(x: np.ndarray) -> bytes:
    request = predict_pb2.PredictRequest(model_spec=SPEC)
    request.inputs[ALIAS].CopyFrom(tf.make_tensor_proto(x))
    return request.SerializeToString()


def encode_before(x: np.ndarray) -> bytes:
    request = gateway_predict_pb2.PredictRequest(model_spec=GATEWAY_SPEC)
    request.inputs[ALIAS].CopyFrom(tensors.to_tensor_proto(x))
    return request.SerializeToString()


def decode_ours(data: bytes) -> np.ndarray:
    return wire.decode_predict_response(data)[ALIAS]


def decode_tf(data: bytes) -> np.ndarray:
    return tf.make_ndarray(predict_pb2.PredictResponse.FromString(data).outputs[ALIAS])


def decode_before(data: bytes) -> np.ndarray:
    return tensors.from_tensor_proto(gateway_predict_pb2.PredictResponse.FromString(data).outputs[ALIAS])


def as_proto_field(x: np.ndarray) -> tensor_pb2.TensorProto:
    """``x`` the way TF Serving's ``Tensor::AsProtoField`` writes it: every value in the dtype's ``*_val`` field."""
    row = tensors.row_of_dtype(x.dtype)
    proto = tensor_pb2.TensorProto(dtype=row.datatype)
    proto.tensor_shape.SetInParent()
    for size in x.shape:
        proto.tensor_shape.dim.add(size=size)
    getattr(proto, row.field).extend(x.ravel().tolist())
    return proto


def response_bytes(proto: tensor_pb2.TensorProto) -> bytes:
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(SPEC)
    response.model_spec.version.value = 1
    response.outputs[ALIAS].ParseFromString(proto.SerializeToString())  # the gateway's TensorProto class or TF's
    return response.SerializeToString()


# -- measuring ------------------------------------------------------------------------------------


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1e3

    return {"p50_ms": statistics.median(ordered) * 1e3, "p10_ms": pct(0.1), "p90_ms": pct(0.9), "n": len(ordered)}


def interleaved(methods: dict[str, Callable[[], Any]], repeats: int, warmup: int, seed: int) -> dict[str, dict]:
    """Time every method once per repetition, in a shuffled order each time; GC runs between calls, not during."""
    order = list(methods)
    shuffle = random.Random(seed)
    for _ in range(warmup):
        for name in order:
            methods[name]()
    times: dict[str, list[float]] = {name: [] for name in order}
    gc_was_enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            shuffle.shuffle(order)
            for name in order:
                gc.collect()
                gc.disable()
                started = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - started)
                gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: _summary(values) for name, values in times.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def cases(samples: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Every measured pair: its methods (zero-argument callables) and whether ours agrees with tf's result."""
    out = []
    for tensor_name, x in samples.items():
        ours_request = predict_pb2.PredictRequest.FromString(encode_ours(x))
        out.append(
            {
                "case": "encode",
                "tensor": tensor_name,
                "form": "request bytes",
                "methods": {
                    "ours": lambda x=x: encode_ours(x),
                    "tf": lambda x=x: encode_tf(x),
                    "before": lambda x=x: encode_before(x),
                },
                "agree": _same(tf.make_ndarray(ours_request.inputs[ALIAS]), x)
                and ours_request == predict_pb2.PredictRequest.FromString(encode_before(x)),
                "target": True,
            }
        )
        out.append(
            {
                "case": "proto",
                "tensor": tensor_name,
                "form": "TensorProto object",
                "methods": {"ours": lambda x=x: tensors.to_tensor_proto(x), "tf": lambda x=x: tf.make_tensor_proto(x)},
                "agree": _same(tf.make_ndarray(tensors.to_tensor_proto(x)), x),
                "target": False,
            }
        )
        for form, proto in (("content", tensors.to_tensor_proto(x)), ("field", as_proto_field(x))):
            data = response_bytes(proto)
            out.append(
                {
                    "case": "decode",
                    "tensor": tensor_name,
                    "form": form,
                    "response_bytes": len(data),
                    "methods": {
                        "ours": lambda data=data: decode_ours(data),
                        "tf": lambda data=data: decode_tf(data),
                        "before": lambda data=data: decode_before(data),
                    },
                    "agree": _same(decode_ours(data), decode_tf(data)) and _same(decode_ours(data), x),
                    "target": True,
                }
            )
    return out


def _verdict(row: dict[str, Any]) -> str:
    if not row["target"]:
        return "(info)"
    return "held" if row["ratio"] >= TARGET else "MISSED"


def run(args: argparse.Namespace) -> dict[str, Any]:
    samples = sample_tensors(args.seed)
    # Everything alive now (TensorFlow's many objects included) leaves the collector's view, so the
    # collection before each timed call is short and no collection falls inside one.
    gc.collect()
    gc.freeze()
    rows = []
    for index, case in enumerate(cases(samples)):
        print(f"  measuring {case['case']} {case['tensor']} {case['form']} ...", file=sys.stderr, flush=True)
        stats = interleaved(case.pop("methods"), args.repeats, args.warmup, args.seed + index)
        ratio = stats["tf"]["p50_ms"] / stats["ours"]["p50_ms"]
        rows.append({**case, "methods": stats, "ratio": ratio})
    results = {
        "target_ratio": TARGET,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "smoke": args.smoke,
        "rows": rows,
        "all_targets_held": all(row["ratio"] >= TARGET for row in rows if row["target"]),
        "all_agree": all(row["agree"] for row in rows),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "tensorflow": tf.__version__,
            "protobuf": _version("google.protobuf"),
            "protobuf_backend": _protobuf_backend(),
        },
    }
    for row in rows:
        row["verdict"] = _verdict(row)
    return results


def _version(module: str) -> str:
    return getattr(__import__(module, fromlist=["__version__"]), "__version__", "?")


def _protobuf_backend() -> str:
    from google.protobuf.internal import api_implementation

    return api_implementation.Type()


def print_table(results: dict[str, Any]) -> None:
    print(
        f"\ntensor codec, p50 ms over {results['repeats']} interleaved repetitions "
        f"(p10..p90 in brackets); ratio = tf / ours, target >= {results['target_ratio']}x"
    )
    header = f"{'case':7} {'tensor':21} {'form':19} {'ours':>22} {'tf':>22} {'before':>22} {'ratio':>7}  verdict  agree"
    print(header)
    print("-" * len(header))
    for row in results["rows"]:
        cells = []
        for name in ("ours", "tf", "before"):
            stats = row["methods"].get(name)
            cells.append(f"{stats['p50_ms']:8.3f} [{stats['p10_ms']:.2f}..{stats['p90_ms']:.2f}]" if stats else "-")
        print(
            f"{row['case']:7} {row['tensor']:21} {row['form']:19} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22} "
            f"{row['ratio']:6.2f}x  {row['verdict']:7}  {row['agree']}"
        )
    held = "held" if results["all_targets_held"] else "MISSED"
    print(f"\n1.5x target (encode request bytes, decode both forms, both tensors): {held}")
    print(f"ours gives the same tensors as tf in every case: {results['all_agree']}")
    if results["smoke"]:
        print("(smoke run: too few repetitions for the ratios to mean much)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="timed calls per method and case (default 40)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per method first (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="3 repetitions, 1 warmup: checks the script works")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.warmup = 3, 1
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if results["all_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
