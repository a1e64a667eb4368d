"""Contract tests: the gateway and the serving backends, each test on both backends (local and gRPC)."""
