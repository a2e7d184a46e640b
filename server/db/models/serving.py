"""Model versions vLLM serves and the aliases clients ask for."""

from __future__ import annotations

from advanced_alchemy.base import UUIDv7AuditBase
from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column


class ModelVersion(UUIDv7AuditBase):
    """A concrete, immutable thing vLLM serves: the base checkpoint or one adapter version."""

    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # base | lora | prompt_tuning
    base_model: Mapped[str] = mapped_column(String(500))
    adapter_path: Mapped[str | None] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(32), default="serving")
    notes: Mapped[str] = mapped_column(Text, default="")


class ModelAlias(UUIDv7AuditBase):
    """What clients ask for (e.g. ``ratchet``) and which version answers, with an optional canary split."""

    __tablename__ = "model_aliases"

    alias: Mapped[str] = mapped_column(String(200), unique=True)
    version_name: Mapped[str] = mapped_column(ForeignKey("model_versions.name"))
    canary_version_name: Mapped[str | None] = mapped_column(ForeignKey("model_versions.name"))
    canary_fraction: Mapped[float] = mapped_column(Float, default=0.0)
