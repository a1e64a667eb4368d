"""System tests: real programs (Redis, nginx, Prometheus, Chromium, Docker), extra virtualenvs, docs, benchmarks."""
