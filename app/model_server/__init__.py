"""A TF Serving-compatible model server over the embedded runtime, for hosts that cannot run TF Serving's image.

``python -m app.model_server`` runs it with ``tensorflow_model_server``'s flags (``app.model_server.flags``);
:class:`ModelServer` is its gRPC API, which the tests also run in-process. The names below are imported on first
use, so that reading the flags (``--help``, a wrong flag) does not load TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.model_server.grpc_api import ModelServer, reload_request

__all__ = ["ModelServer", "reload_request"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from app.model_server import grpc_api

        return getattr(grpc_api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
