"""Gateway errors: one base that carries its HTTP status, and the table that maps serving status codes onto it.

    GatewayError (500 "internal")
    +-- BadInput (400 "bad_input")
    +-- Unauthorized (401 "unauthorized")
    +-- NotFound (404)
    |   +-- UnknownModel ("unknown_model")
    |   +-- UnknownVersion ("unknown_version")
    |   +-- UnknownLabel ("unknown_label")
    |   +-- UnknownSignature ("unknown_signature")
    +-- PayloadTooLarge (413 "payload_too_large")
    +-- UnsupportedMediaType (415 "unsupported_media_type")
    +-- NoFaceFound (422 "no_face")
    +-- RateLimited (429 "rate_limited", carries retry_after seconds)
    +-- ModelFailure (502 "model_failure")
    +-- ServingUnavailable (503 "serving_unavailable", carries retry_after seconds)
    +-- DeadlineExceeded (504 "deadline_exceeded")

Both backends speak TF Serving's language for failures: a status code
(``grpc.StatusCode``) plus a message. The gRPC backend gets them off the wire;
the in-process runtime raises :class:`ServingStatus` with the same codes and
messages TF Serving would send. :func:`from_serving_status` is the single table
that turns either into a ``GatewayError``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc

log = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error the gateway reports to its client with an HTTP status."""

    status_code: int = 500
    code: str = "internal"
    # The model server's own status (code and message as it sent them) when the error is a translation of one.
    serving_status: ServingStatus | None = None

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BadInput(GatewayError):
    status_code = 400
    code = "bad_input"


class Unauthorized(GatewayError):
    status_code = 401
    code = "unauthorized"


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"


class UnknownModel(NotFound):
    code = "unknown_model"


class UnknownVersion(NotFound):
    code = "unknown_version"


class UnknownLabel(NotFound):
    code = "unknown_label"


class UnknownSignature(NotFound):
    code = "unknown_signature"


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status_code = 415
    code = "unsupported_media_type"


class NoFaceFound(GatewayError):
    status_code = 422
    code = "no_face"


class RateLimited(GatewayError):
    status_code = 429
    code = "rate_limited"


class ModelFailure(GatewayError):
    status_code = 502
    code = "model_failure"


class ServingUnavailable(GatewayError):
    status_code = 503
    code = "serving_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(GatewayError):
    status_code = 504
    code = "deadline_exceeded"


class ServingStatus(Exception):
    """A failure in TF Serving's terms: a gRPC status code and its message.

    The in-process runtime raises it where TF Serving would answer with a
    non-OK status, so both backends share one translation table.
    """

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.status = code
        self.message = message


# Most specific first: (status code, pattern the message must match or None, error class).
# The messages are TF Serving's own: "Servable not found for request: Specific(m, 3)",
# "Unrecognized servable version label: canary", "Serving signature key \"x\" not found."
_STATUS_TABLE: tuple[tuple[grpc.StatusCode, re.Pattern[str] | None, type[GatewayError]], ...] = (
    (grpc.StatusCode.INVALID_ARGUMENT, re.compile(r"version label"), UnknownLabel),
    (grpc.StatusCode.NOT_FOUND, re.compile(r"version label"), UnknownLabel),
    (grpc.StatusCode.INVALID_ARGUMENT, re.compile(r"signature key .* not found"), UnknownSignature),
    (grpc.StatusCode.FAILED_PRECONDITION, re.compile(r"signature key .* not found"), UnknownSignature),
    (grpc.StatusCode.INVALID_ARGUMENT, None, BadInput),
    (grpc.StatusCode.OUT_OF_RANGE, None, BadInput),
    (grpc.StatusCode.NOT_FOUND, re.compile(r"Specific\(|version \d+"), UnknownVersion),
    (grpc.StatusCode.NOT_FOUND, None, UnknownModel),
    (grpc.StatusCode.FAILED_PRECONDITION, re.compile(r"[Vv]ersion"), UnknownVersion),
    (grpc.StatusCode.DEADLINE_EXCEEDED, None, DeadlineExceeded),
    (grpc.StatusCode.UNAVAILABLE, None, ServingUnavailable),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, None, ServingUnavailable),
    (grpc.StatusCode.CANCELLED, None, ServingUnavailable),
    (grpc.StatusCode.ABORTED, None, ServingUnavailable),
)


# Statuses a graph raises about what it was fed: the client gets TensorFlow's sentence, not its op trace.
_MODEL_SENTENCE_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
)
_NODE_SUFFIX = re.compile(r"^\[\[\{\{node [^}]*\}\}(?: = [^\]]*)?\]\]$|^\[\[.*\]\]$")
_TRACE_HEAD = re.compile(r"^(Detected at node .* defined at \(most recent call last\):|Graph execution error:)$")
_ROOT_ERROR = re.compile(r"^\(\d+\) (?:[A-Z_]+: )?")
_ASSERTION = re.compile(r"^assertion failed: (.*)$")


def model_sentence(message: str) -> str:
    """The sentence TensorFlow wrote about a failed op, without the op-location preamble and node suffix.

    A graph run through TensorFlow's Python session prefixes "Graph execution error:" and a
    "Detected at node ... defined at (most recent call last):" trace; both it and TF Serving's C++
    session end with "[[{{node TopKV2}}]]". What is left is, e.g., "input must have at least k
    columns. Had 50, needed 60". ``tf.debugging.assert_*`` messages lose their brackets.
    """
    kept: list[str] = []
    in_trace = False
    lines = [line.strip() for line in message.splitlines()]
    for line in lines:
        if not line or _NODE_SUFFIX.match(line) or line.startswith(("Additional GRPC error information", "[Op:")):
            continue
        if _TRACE_HEAD.match(line):
            in_trace = line != "Graph execution error:"
            continue
        if in_trace:
            in_trace = not line.startswith("Node: ")  # the trace ends with the node's name
            continue
        if line.startswith(("Node: ", "Errors may have originated from an input operation", "0 successful operations")):
            continue
        if line[0].isdigit() and "root error(s) found" in line:
            continue
        kept.append(_ROOT_ERROR.sub("", line))
    if not kept:  # an unexpected layout: the last line that is not a node suffix
        kept = [line for line in lines if line and not _NODE_SUFFIX.match(line)][-1:] or [message.strip()]
    sentence = kept[0]
    assertion = _ASSERTION.match(sentence)
    if assertion:
        parts = [part.strip() for part in re.findall(r"\[([^\[\]]*)\]", assertion.group(1))]
        sentence = " ".join(part for part in parts if part) or sentence
    return sentence


def from_serving_status(code: grpc.StatusCode, message: str, *, servable: str = "") -> GatewayError:
    """Translate a TF Serving status (code + message) into the matching GatewayError, which keeps the status."""
    error = _translated(code, message, servable)
    error.serving_status = ServingStatus(code, message)
    return error


def _translated(code: grpc.StatusCode, message: str, servable: str) -> GatewayError:
    prefix = f"{servable}: " if servable else ""
    if code in _MODEL_SENTENCE_CODES:
        sentence = model_sentence(message)
        if sentence != message.strip():
            log.info("%s%s: %s", prefix, code.name, message)  # the whole text stays in the log
        message = sentence
    for status, pattern, error_class in _STATUS_TABLE:
        if status == code and (pattern is None or pattern.search(message)):
            return error_class(f"{prefix}{message}")
    # INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ...: the model or server failed.
    return ModelFailure(f"{prefix}{code.name}: {message}")


ERROR_MESSAGE_LIMIT = 1024  # TF Serving's grpc_status_util.cc: kErrorMessageLimit


def wire_message(message: str) -> str:
    """A status message as TF Serving sends it: past 1024 bytes, cut there and marked "...TRUNCATED"."""
    data = message.encode("utf-8")
    if len(data) <= ERROR_MESSAGE_LIMIT:
        return message
    return data[:ERROR_MESSAGE_LIMIT].decode("utf-8", "ignore") + "...TRUNCATED"


@contextlib.contextmanager
def serving_errors(servable: str = "") -> Iterator[None]:
    """Turn a ServingStatus raised inside the block into the GatewayError the gRPC backend makes of the same
    answer from TF Serving (whose messages arrive cut at 1024 bytes)."""
    try:
        yield
    except ServingStatus as exc:
        raise from_serving_status(exc.status, wire_message(exc.message), servable=servable) from exc
