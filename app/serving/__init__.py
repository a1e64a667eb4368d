"""The serving layer: one Backend interface over TF Serving (gRPC) and the in-process runtime."""
