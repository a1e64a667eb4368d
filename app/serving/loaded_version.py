"""One loaded SavedModel version, as TF Serving holds it: a TF1 session, runs by tensor name, the loader's statuses.

Loading follows saved_model_bundle_factory.cc and session_bundle_util.cc: the "serve" tag set in
its own graph and session, TF Serving's status codes and messages when a load fails. A version is
reference-counted so that a request in flight finishes on it after it is retired.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tensorflow as tf

# The C session run (see LoadedVersion.run): TensorFlow's Python Session casts feeds to the
# placeholder's dtype and checks their shape, which TF Serving's C++ session does not.
from tensorflow.python.client import pywrap_tf_session

from app.errors import ServingStatus
from app.serving.base import DEFAULT_SIGNATURE, ModelMetadata, metadata_from_signature_defs
from app.serving.batching import BatchingSession

SAVED_MODEL_TAGS = ("serve",)
_INVALID = grpc.StatusCode.INVALID_ARGUMENT

# TensorFlow's error codes are gRPC's, by number.
TF_CODE_TO_GRPC = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_of(exc: tf.errors.OpError) -> grpc.StatusCode:
    """The gRPC code of a TensorFlow error (the numbers are the same)."""
    return TF_CODE_TO_GRPC.get(exc.error_code, grpc.StatusCode.UNKNOWN)


def status_of(exc: tf.errors.OpError) -> ServingStatus:
    """A TensorFlow error as the status TF Serving answers with."""
    return ServingStatus(grpc_code_of(exc), exc.message)


def load_saved_model(session: tf.compat.v1.Session, path: Path) -> Any:
    """tf.compat.v1.saved_model.loader.load, failing with the status TF Serving's C++ loader reports."""
    if (path / "export.meta").exists():
        raise ServingStatus(grpc.StatusCode.UNIMPLEMENTED, "Session Bundle is deprecated and removed.")
    binary, text = path / "saved_model.pb", path / "saved_model.pbtxt"
    if not (binary.exists() or text.exists()):  # MaybeSavedModelDirectory
        raise ServingStatus(
            grpc.StatusCode.NOT_FOUND,
            "Specified file path does not appear to contain a SavedModel bundle (should have a file called "
            f"`saved_model.pb`)\nSpecified file path: {path}",
        )
    try:
        return tf.compat.v1.saved_model.loader.load(session, list(SAVED_MODEL_TAGS), str(path))
    except tf.errors.OpError as exc:
        raise status_of(exc) from exc
    except OSError as exc:  # the Python reader's "Cannot parse file": ReadBinaryProto's DATA_LOSS in C++
        proto, form = (binary, "binary") if binary.exists() else (text, "text")
        raise ServingStatus(grpc.StatusCode.DATA_LOSS, f"Can't parse {proto} as {form} proto") from exc
    except RuntimeError as exc:
        if "could not be found in SavedModel" in str(exc):
            raise ServingStatus(
                grpc.StatusCode.NOT_FOUND,
                f"Could not find meta graph def matching supplied tags: {{ {' '.join(SAVED_MODEL_TAGS)} }}. "
                "To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
            ) from exc
        raise ServingStatus(grpc.StatusCode.UNKNOWN, str(exc)) from exc
    except Exception as exc:  # what else the Python loader raises: still a failed load, not a crash
        raise ServingStatus(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}") from exc


class LoadedVersion:
    """One version of one model, loaded in its own graph and session, reference-counted for safe unloading."""

    def __init__(self, name: str, version: int, path: Path, session_config: tf.compat.v1.ConfigProto) -> None:
        self.name = name
        self.version = version
        self.path = path
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=session_config)
        try:
            meta_graph = load_saved_model(self._session, path)
            self._session._extend_graph()  # the C session must know every node before _call_tf_sessionrun
        except BaseException:
            self._session.close()
            raise
        self.signature_defs: dict[str, Any] = dict(meta_graph.signature_def)
        self.metadata: ModelMetadata = metadata_from_signature_defs(name, version, self.signature_defs)
        self._tensors: dict[str, Any] = {}
        self._refs = 0
        self._retired = False
        self._ref_lock = threading.Lock()
        #: Set when the server batches this version's runs (``--enable_batching``): runs go through it.
        self.batching: BatchingSession | None = None

    def acquire(self) -> None:
        with self._ref_lock:
            self._refs += 1

    def release(self) -> None:
        with self._ref_lock:
            self._refs -= 1
            close = self._retired and self._refs == 0
        if close:
            self._session.close()

    def retire(self) -> None:
        """Close the session once the last request using this version has finished."""
        if self.batching is not None:
            self.batching.close()
        with self._ref_lock:
            self._retired = True
            close = self._refs == 0
        if close:
            self._session.close()

    def _tensor(self, name: str, *, feed: bool = False) -> Any:
        found = self._tensors.get(name)
        if found is None:
            try:
                found = self._graph.get_tensor_by_name(name)._as_tf_output()
            except (KeyError, ValueError, TypeError):
                what = f"Feed input {name}" if feed else f"FetchOutputs node {name}"
                raise ServingStatus(grpc.StatusCode.NOT_FOUND, f"{what}: not found") from None
            self._tensors[name] = found
        return found

    def run(self, feeds: Mapping[str, Any], fetches: list[str], timeout: float | None = None) -> list[np.ndarray]:
        """One step of the session by tensor names: through the batching session when this version batches (its
        runs are then merged with others of the same tensors), else on its own (:meth:`run_alone`)."""
        if self.batching is not None:
            return self.batching.run(feeds, fetches, timeout)
        return self.run_alone(feeds, fetches, timeout)

    def run_alone(self, feeds: Mapping[str, Any], fetches: list[str], timeout: float | None = None) -> list[np.ndarray]:
        """One step of the session by tensor names, through TensorFlow's C API as TF Serving's C++ session runs.

        The arrays go in as they are: a float64 array fed to a float input fails in the session
        with "Expects arg[0] to be float but double is provided", and an array of an unexpected
        shape runs, or fails inside the graph, as it would in TF Serving.
        """
        feed_outputs = {self._tensor(name, feed=True): value for name, value in feeds.items()}
        fetch_outputs = [self._tensor(name) for name in fetches]
        options = None
        if timeout is not None:
            run_options = tf.compat.v1.RunOptions(timeout_in_ms=max(1, int(timeout * 1000)))
            options = pywrap_tf_session.TF_NewBufferFromString(run_options.SerializeToString())
        try:
            values = self._session._call_tf_sessionrun(options, feed_outputs, fetch_outputs, [], None)
        except tf.errors.OpError as exc:
            raise status_of(exc) from exc
        except (TypeError, ValueError) as exc:  # an array TensorFlow cannot take at all (e.g. Python objects)
            raise ServingStatus(_INVALID, str(exc)) from exc
        finally:
            if options is not None:
                pywrap_tf_session.TF_DeleteBuffer(options)
        return [np.asarray(value) for value in values]

    def predict(
        self,
        signature_name: str,
        inputs: Mapping[str, Any],
        *,
        output_filter: Iterable[str] = (),
        timeout: float | None = None,
        decode: Callable[[Any], np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """TF Serving's RunPredict: its checks in its order and words, then the session.

        ``decode`` turns each sent input into an array (``tf.make_ndarray`` for TensorProtos);
        when it fails, the input is a "tensor parsing error", as Tensor::FromProto's failure is.
        """
        key = signature_name or DEFAULT_SIGNATURE
        signature = self.signature_defs.get(key)
        if signature is None:
            raise ServingStatus(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.')
        sent, expected, defaults = sorted(inputs), sorted(signature.inputs), sorted(signature.defaults)
        if len(sent) > len(expected) or (len(sent) < len(expected) and not defaults):
            extra, missing = sorted(set(sent) - set(expected)), sorted(set(expected) - set(sent))
            raise ServingStatus(
                _INVALID,
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) "
                f"!= len({{{','.join(expected)}}}). Sent extra: {{{','.join(extra)}}}. "
                f"Missing but required: {{{','.join(missing)}}}.",
            )
        feeds: dict[str, Any] = {}
        used: list[str] = []
        for alias in expected:
            info = signature.inputs[alias]
            if alias in inputs:
                raw, convert = inputs[alias], decode
                used.append(alias)
            elif alias in signature.defaults:
                raw, convert = signature.defaults[alias], tf.make_ndarray
            else:
                raise ServingStatus(
                    _INVALID,
                    f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no default "
                    f"value provided. Inputs expected to be in the request {{{','.join(sent)}}}, or default input "
                    f"alias set: {','.join(defaults)}",
                )
            try:
                feeds[info.name] = convert(raw) if convert is not None else raw
            except (TypeError, ValueError) as exc:
                raise ServingStatus(_INVALID, f"tensor parsing error: {alias}") from exc
        if sent and len(used) != len(sent):
            raise ServingStatus(
                _INVALID,
                f"Inputs contains invalid name. Used request inputs: {','.join(used)}, request input: {','.join(sent)}",
            )
        aliases: list[str] = []
        for alias in output_filter:
            if alias not in signature.outputs:
                raise ServingStatus(
                    _INVALID,
                    f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                    f"{{{','.join(sorted(signature.outputs))}}}.",
                )
            if alias in aliases:
                raise ServingStatus(_INVALID, f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        aliases = aliases or list(signature.outputs)
        values = self.run(feeds, [signature.outputs[alias].name for alias in aliases], timeout)
        return dict(zip(aliases, values, strict=True))
