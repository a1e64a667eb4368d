"""HTTP surfaces, one blueprint each: pages (browser), api (JSON v1), ops (health, readiness, metrics)."""
