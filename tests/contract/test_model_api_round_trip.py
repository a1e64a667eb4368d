"""Every demo servable through three doors, with identical numbers: the backend's Predict (gRPC Predict to the
protocol double, or the embedded runtime), TF Serving's REST API (columnar and row) and the Open Inference
Protocol. The inputs are made from each servable's own signature, so a servable added to serving_models.config
is covered the same way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flask import Flask

from app.protocols.v2_tensors import DATATYPES
from app.serving.base import ModelRef, TensorSpec
from app.serving.model_config import load_model_config
from app.web.extensions import serving

pytestmark = pytest.mark.slow

V2_TYPES = {row.dtype: row.name for row in DATATYPES}
FREE_SIZE = 96  # the size given to a dimension the signature leaves open (past the batch)


def sample(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """An input of the signature's dtype and shape: open dimensions made concrete, values the dtype can hold."""
    shape = tuple(
        (1 if index == 0 else FREE_SIZE) if size is None else size for index, size in enumerate(spec.shape or ())
    )
    if spec.dtype == np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    if spec.dtype.kind in "iu":
        return np.full(shape, 3, dtype=spec.dtype)  # a count (k): small and valid
    if spec.dtype.kind == "f":
        return rng.uniform(0, 255, size=shape).astype(spec.dtype)
    return np.full(shape, b"face", dtype=object)


def demo_servables(app: Flask) -> list[str]:
    settings = app.config["GATEWAY_SETTINGS"]
    return [servable.name for servable in load_model_config(settings.model_config_file, check_paths=False).servables]


def as_array(values, like: np.ndarray) -> np.ndarray:
    if like.dtype.kind == "O":
        return np.array([item.encode("utf-8") for item in np.ravel(values).tolist()], dtype=object).reshape(like.shape)
    return np.array(values, dtype=like.dtype).reshape(like.shape)


def identical(got: np.ndarray, expected: np.ndarray) -> bool:
    if expected.dtype.kind == "f":
        return got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True)
    return got.shape == expected.shape and got.tolist() == expected.tolist()


def test_every_demo_servable_gives_the_same_numbers_through_every_door(demo_app: Flask):
    client = demo_app.test_client()
    names = demo_servables(demo_app)
    assert len(names) >= 4
    rng = np.random.default_rng(18)
    for name in names:
        with demo_app.app_context():
            backend = serving().backend
            signature = backend.metadata(ModelRef(name))
            inputs = {alias: sample(spec, rng) for alias, spec in signature.inputs.items()}
            expected = backend.predict(ModelRef(name), inputs)

        columnar = {"inputs": {alias: value.tolist() for alias, value in inputs.items()}}
        response = client.post(f"/v1/models/{name}:predict", data=json.dumps(columnar, default=_bytes))
        assert response.status_code == 200, (name, response.get_data(as_text=True)[:300])
        outputs = json.loads(response.get_data(as_text=True))["outputs"]
        if len(expected) == 1:
            outputs = {next(iter(expected)): outputs}
        for alias, value in expected.items():
            assert identical(as_array(outputs[alias], value), value), (name, "REST columnar", alias)

        batched = all(value.ndim and value.shape[0] == 1 for value in [*inputs.values(), *expected.values()])
        if batched:  # rows: every input and output has the batch dimension
            rows = {"instances": [{alias: value[0].tolist() for alias, value in inputs.items()}]}
            response = client.post(f"/v1/models/{name}:predict", data=json.dumps(rows, default=_bytes))
            assert response.status_code == 200, (name, response.get_data(as_text=True)[:300])
            (prediction,) = json.loads(response.get_data(as_text=True))["predictions"]
            if len(expected) == 1:
                prediction = {next(iter(expected)): prediction}
            for alias, value in expected.items():
                assert identical(as_array([prediction[alias]], value), value), (name, "REST rows", alias)

        request = {
            "inputs": [
                {
                    "name": alias,
                    "datatype": V2_TYPES[value.dtype],
                    "shape": list(value.shape),
                    "data": [_text(item) for item in value.ravel().tolist()],
                }
                for alias, value in inputs.items()
            ]
        }
        response = client.post(f"/v2/models/{name}/infer", data=json.dumps(request), content_type="application/json")
        assert response.status_code == 200, (name, response.get_data(as_text=True)[:300])
        answered = {item["name"]: item for item in response.get_json()["outputs"]}
        assert set(answered) == set(expected)
        for alias, value in expected.items():
            assert answered[alias]["shape"] == list(value.shape)
            assert identical(as_array(answered[alias]["data"], value), value), (name, "v2", alias)


def _bytes(item: object) -> str:
    if isinstance(item, bytes):
        return item.decode("utf-8")
    raise TypeError(type(item).__name__)


def _text(item: object) -> object:
    return item.decode("utf-8") if isinstance(item, bytes) else item
