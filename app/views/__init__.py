"""HTTP surfaces, one blueprint each: operations (health, readiness)."""
