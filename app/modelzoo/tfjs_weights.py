"""Reads TensorFlow.js weight manifests (``*-weights_manifest.json`` / ``model.json``) into named numpy arrays.

A TF.js model keeps its weights in binary shard files described by a manifest:
a list of groups, each naming its shard ``paths`` (read in order and joined into
one buffer) and its ``weights`` in buffer order, each with a ``name``, ``shape``
and ``dtype``. A weight may be stored quantized (its entry's ``quantization``):
``uint8``/``uint16`` values dequantized as ``min + q * scale``, or ``float16``.
This reader supports float32, int32 and bool weights, those three quantizations,
and little-endian data (the format's byte order); anything else fails, naming
the weight. Nothing here needs TensorFlow.

    arrays = read_weights(Path("model/face_recognition_model-weights_manifest.json"))
    arrays["conv32_down/conv/filters"].shape  # (7, 7, 3, 32), float32
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class WeightsManifestError(ValueError):
    """The manifest or its shards are not a TF.js weights layout this reader understands."""


# Stored dtypes: manifest dtype -> numpy dtype of the values in the shard (little-endian).
_STORED = {"float32": "<f4", "int32": "<i4", "bool": "u1"}
_QUANTIZED = {"uint8": "u1", "uint16": "<u2", "float16": "<f2"}
_RESULT = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """The weight groups of a manifest file: a bare ``weights_manifest.json`` list, or a ``model.json``."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsManifestError(f"{path}: not a readable JSON weights manifest ({exc})") from exc
    groups = document.get("weightsManifest") if isinstance(document, dict) else document
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise WeightsManifestError(f"{path}: expected a list of weight groups (or a model.json with weightsManifest)")
    return groups


def read_weights(manifest_path: Path) -> dict[str, np.ndarray]:
    """Every weight of a manifest, dequantized, by name; the shards are read from the manifest's folder."""
    manifest_path = Path(manifest_path)
    groups = read_manifest(manifest_path)
    shards: list[bytes] = []
    for group in groups:
        paths = group.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise WeightsManifestError(f"{manifest_path}: a weight group has no list of shard paths")
        parts = []
        for relative in paths:
            shard = (manifest_path.parent / relative).resolve()
            if not shard.is_relative_to(manifest_path.parent.resolve()):
                raise WeightsManifestError(f"{manifest_path}: shard path {relative!r} leaves the manifest's folder")
            try:
                parts.append(shard.read_bytes())
            except OSError as exc:
                raise WeightsManifestError(f"{manifest_path}: cannot read shard {relative!r} ({exc})") from exc
        shards.append(b"".join(parts))
    return decode_groups(groups, shards, source=str(manifest_path))


def decode_groups(
    groups: Sequence[Mapping[str, Any]], shards: Sequence[bytes], *, source: str = "manifest"
) -> dict[str, np.ndarray]:
    """Decode each group's joined shard bytes into its weights (the manifest's ``weights`` order)."""
    if len(groups) != len(shards):
        raise WeightsManifestError(f"{source}: {len(groups)} weight groups but {len(shards)} shard buffers")
    arrays: dict[str, np.ndarray] = {}
    for group, buffer in zip(groups, shards, strict=True):
        offset = 0
        for entry in group.get("weights", []):
            name, array, size = _decode_weight(entry, buffer, offset, source)
            if name in arrays:
                raise WeightsManifestError(f"{source}: weight {name!r} appears twice")
            arrays[name] = array
            offset += size
        if offset != len(buffer):
            raise WeightsManifestError(
                f"{source}: the weights of a group take {offset} bytes but its shards hold {len(buffer)}"
            )
    return arrays


def _decode_weight(entry: Mapping[str, Any], buffer: bytes, offset: int, source: str) -> tuple[str, np.ndarray, int]:
    name = entry.get("name")
    shape = entry.get("shape")
    dtype = entry.get("dtype")
    if not isinstance(name, str) or not isinstance(shape, list) or not all(isinstance(d, int) for d in shape):
        raise WeightsManifestError(f"{source}: weight entry {entry!r:.200} needs a name and an integer shape")
    if dtype not in _STORED:
        raise WeightsManifestError(f"{source}: weight {name!r} has dtype {dtype!r}; supported: {', '.join(_STORED)}")
    count = math.prod(shape)
    quantization = entry.get("quantization")
    stored = np.dtype(_STORED[dtype])
    if quantization is not None:
        kind = quantization.get("dtype") if isinstance(quantization, dict) else None
        if kind not in _QUANTIZED:
            raise WeightsManifestError(
                f"{source}: weight {name!r} is quantized as {kind!r}; supported: {', '.join(_QUANTIZED)}"
            )
        stored = np.dtype(_QUANTIZED[kind])
    size = count * stored.itemsize
    if offset + size > len(buffer):
        raise WeightsManifestError(
            f"{source}: weight {name!r} needs bytes {offset}..{offset + size} but the shards end at {len(buffer)}"
        )
    values = np.frombuffer(buffer, dtype=stored, count=count, offset=offset)
    if quantization is None or quantization["dtype"] == "float16":
        array = values.astype(_RESULT[dtype])
    else:
        try:
            scale, minimum = float(quantization["scale"]), float(quantization["min"])
        except (KeyError, TypeError, ValueError) as exc:
            message = f"{source}: weight {name!r} is quantized without a numeric scale and min"
            raise WeightsManifestError(message) from exc
        # As TF.js dequantizes: q * scale + min in double precision, stored as float32 (rounded for int32).
        exact = values.astype(np.float64) * scale + minimum
        array = np.rint(exact).astype(np.int32) if dtype == "int32" else exact.astype(_RESULT[dtype])
    return name, array.reshape(shape), size
