"""The rows of custom sandbox templates: a tenant's name for an image shared by its recipe."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class SandboxTemplate(Base):
    """A tenant's custom template. Its image is named by the hash of its recipe, so two
    tenants with the same recipe share one image; the row is what makes it theirs."""

    __tablename__ = "sandbox_templates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    base: Mapped[str] = mapped_column(String(64))  # the built-in template it extends
    debian_packages: Mapped[list[str]] = mapped_column(JSON)
    pypi_packages: Mapped[list[str]] = mapped_column(JSON)
    image: Mapped[str] = mapped_column(String(256))  # the custom image's tag when it was made
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    build_ms: Mapped[int] = mapped_column(Integer)  # 0 when the image was already built
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("tenant_id", "name", name="uq_sandbox_templates_tenant_name"),)
