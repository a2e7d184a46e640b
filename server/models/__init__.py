"""The model registry: versions, aliases and the canary split (promotion and rollback will live here too)."""
