"""A TF Serving-compatible model server over the embedded runtime, for hosts that cannot run TF Serving's image."""

from app.model_server.grpc_api import ModelServer, reload_request

__all__ = ["ModelServer", "reload_request"]
