"""The rows of a session sandbox's network: the ports it exposes and its egress allow-list."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class SandboxExposure(Base):
    """A port of a session sandbox reachable over the HTTP server. Only the token's hash is
    kept: the URL is shown once, and exposing the port again issues a new one."""

    __tablename__ = "sandbox_exposures"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    port: Mapped[int] = mapped_column(Integer)
    token_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (UniqueConstraint("sandbox_id", "port", name="uq_sandbox_exposures_sandbox_port"),)


class SandboxNetwork(Base):
    """A sandbox's egress allow-list (``host:port`` rules); no row: no network at all."""

    __tablename__ = "sandbox_networks"

    sandbox_id: Mapped[str] = mapped_column(ForeignKey("sandboxes.id"), primary_key=True)
    allow: Mapped[list[str]] = mapped_column(JSON)
    # The host directory of its proxy's socket, bound into the sandbox.
    socket_dir: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
