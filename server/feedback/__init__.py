"""Votes on answers, regeneration, and deleting a user's data."""
