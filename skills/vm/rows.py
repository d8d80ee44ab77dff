"""The VM skill's rows in the store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from scheduler.models import Base, UTCDateTime, utcnow


class Vm(Base):
    """A virtual machine: one QEMU process while running, an overlay disk while it exists.

    The record is written before its disk or process exists and marked deleted
    only after both are gone, so a QEMU process of this store with no live
    record is a stray the reaper kills."""

    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    flavor: Mapped[str] = mapped_column(String(32))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    disk_mib: Mapped[int] = mapped_column(Integer)
    # creating | starting | running | stopped | deleting | deleted | failed
    state: Mapped[str] = mapped_column(String(16), default="creating")
    accel: Mapped[str | None] = mapped_column(String(8), nullable=True)  # kvm | tcg
    ttl_s: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    delete_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_vms_state", "state"),)


class VmSnapshot(Base):
    """A disk snapshot of a VM, kept inside its overlay until the VM is deleted."""

    __tablename__ = "vm_snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
