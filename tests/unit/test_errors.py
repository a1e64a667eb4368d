"""The error family and the one table that maps TF Serving status codes onto it."""

from __future__ import annotations

import grpc
import pytest

from app import errors
from app.serving.base import ModelRef


@pytest.mark.parametrize(
    ("code", "message", "error", "status"),
    [
        (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(m)", errors.UnknownModel, 404),
        (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model m", errors.UnknownModel, 404),
        (
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(m, 3)",
            errors.UnknownVersion,
            404,
        ),
        (grpc.StatusCode.NOT_FOUND, "Could not find version 3 of model m", errors.UnknownVersion, 404),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: c",
            errors.UnknownLabel,
            404,
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "s" not found.',
            errors.UnknownSignature,
            404,
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "input tensor alias not found in signature: z",
            errors.BadInput,
            400,
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg x to be float but string is provided",
            errors.BadInput,
            400,
        ),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.DeadlineExceeded, 504),
        (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses", errors.ServingUnavailable, 503),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", errors.ServingUnavailable, 503),
        (grpc.StatusCode.INTERNAL, "Matrix size-incompatible", errors.ModelFailure, 502),
        (grpc.StatusCode.UNKNOWN, "boom", errors.ModelFailure, 502),
        (grpc.StatusCode.UNIMPLEMENTED, "no Classify here", errors.ModelFailure, 502),
    ],
)
def test_status_table(code, message, error, status):
    translated = errors.from_serving_status(code, message, servable="m")
    assert type(translated) is error
    assert translated.status_code == status
    assert translated.message.startswith("m: ")
    assert message in translated.message


def test_unavailable_carries_retry_hint():
    error = errors.from_serving_status(grpc.StatusCode.UNAVAILABLE, "down")
    assert error.retry_after == 1.0
    assert error.to_dict() == {"error": {"code": "serving_unavailable", "message": "down"}}


def test_every_error_has_its_own_code():
    family = [cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.GatewayError)]
    codes = [cls.code for cls in family]
    assert len(codes) == len(set(codes))
    assert all(400 <= cls.status_code < 600 for cls in family)


def test_serving_errors_context_translates():
    with pytest.raises(errors.UnknownModel) as caught, errors.serving_errors("face_detection"):
        raise errors.ServingStatus(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(x)")
    assert isinstance(caught.value.__cause__, errors.ServingStatus)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "m", "version": 1, "label": "stable"},
        {"name": "m", "version": -1},
        {"name": "m", "version": True},
        {"name": "m", "version": "3"},
        {"name": "m", "label": "../x"},
        {"name": "m", "label": ""},
        {"name": "m", "signature": ""},
    ],
)
def test_model_ref_rejects(kwargs):
    with pytest.raises(errors.BadInput):
        ModelRef(**kwargs)


def test_model_ref_str():
    assert str(ModelRef("m", version=3)) == "m@3[serving_default]"
    assert str(ModelRef("m", label="canary", signature="s")) == "m@canary[s]"
