"""Guardrails around every answer: our `Rails` interface, with NeMo Guardrails as the implementation."""
