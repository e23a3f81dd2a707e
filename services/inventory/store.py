"""Inventory tables and queries. Functions take a session and never commit."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, MetaData, String, Text, func, or_, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shared.db import UTCDateTime
from shared.outbox import define_outbox
from shared.timeutil import iso


class Base(DeclarativeBase):
    """Inventory's own metadata."""

    metadata = MetaData()


OUTBOX, INBOX = define_outbox(Base.metadata)


class Lab(Base):
    """A lab or facility of one organisation, with its managers."""

    __tablename__ = "labs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    org: Mapped[str] = mapped_column(String(100), index=True)
    building: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str] = mapped_column(String(64))
    managers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    show_titles: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    def snapshot(self) -> dict[str, Any]:
        """The lab as the API returns it and events carry it."""
        return {
            "id": self.id,
            "name": self.name,
            "org": self.org,
            "building": self.building,
            "timezone": self.timezone,
            "managers": self.managers,
            "show_titles": self.show_titles,
            "version": self.version,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Resource(Base):
    """A bookable instrument or room."""

    __tablename__ = "resources"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    lab_id: Mapped[str] = mapped_column(ForeignKey("labs.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    category: Mapped[str] = mapped_column(String(200), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="active")
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    rates: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)

    def snapshot(self) -> dict[str, Any]:
        """The resource as the API returns it and events carry it."""
        return {
            "id": self.id,
            "lab_id": self.lab_id,
            "name": self.name,
            "kind": self.kind,
            "category": self.category,
            "description": self.description,
            "status": self.status,
            "policy": self.policy,
            "rates": self.rates,
            "version": self.version,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


class Outage(Base):
    """A period in which a resource cannot be booked (maintenance, breakdown)."""

    __tablename__ = "outages"
    __table_args__ = (Index("ix_outages_resource_start", "resource_id", "start_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def snapshot(self) -> dict[str, Any]:
        """The outage as the API returns it and events carry it."""
        return {
            "id": self.id,
            "resource_id": self.resource_id,
            "start": iso(self.start_at),
            "end": iso(self.end_at),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "deleted_at": iso(self.deleted_at),
        }


class Qualification(Base):
    """A user trained (qualified) on a resource, until ``expires``."""

    __tablename__ = "qualifications"
    resource_id: Mapped[str] = mapped_column(ForeignKey("resources.id"), primary_key=True)
    sub: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    granted_by: Mapped[str] = mapped_column(String(200))
    granted_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)

    def snapshot(self) -> dict[str, Any]:
        """The qualification as the API returns it and events carry it."""
        return {
            "resource_id": self.resource_id,
            "sub": self.sub,
            "expires": iso(self.expires),
            "granted_by": self.granted_by,
            "granted_at": iso(self.granted_at),
            "revoked_at": iso(self.revoked_at),
        }


def list_labs(session: Session, org: str | None, limit: int, after: list | None) -> list[Lab]:
    """Labs ordered by name, then id."""
    stmt = select(Lab).order_by(Lab.name, Lab.id).limit(limit + 1)
    if org:
        stmt = stmt.where(Lab.org == org)
    if after:
        stmt = stmt.where(or_(Lab.name > after[0], (Lab.name == after[0]) & (Lab.id > after[1])))
    return list(session.scalars(stmt))


def list_resources(
    session: Session,
    *,
    lab_id: str | None,
    category: str | None,
    status: str | None,
    q: str | None,
    limit: int,
    after: list | None,
) -> list[Resource]:
    """Resources filtered and ordered by name, then id; ``category`` also matches sub-categories."""
    stmt = select(Resource).order_by(Resource.name, Resource.id).limit(limit + 1)
    if lab_id:
        stmt = stmt.where(Resource.lab_id == lab_id)
    if category:
        stmt = stmt.where(or_(Resource.category == category, Resource.category.startswith(category + "/")))
    if status:
        stmt = stmt.where(Resource.status == status)
    if q:
        pattern = f"%{q.lower()}%"

        stmt = stmt.where(
            or_(func.lower(Resource.name).like(pattern), func.lower(Resource.description).like(pattern),
                func.lower(Resource.category).like(pattern))
        )
    if after:
        stmt = stmt.where(or_(Resource.name > after[0], (Resource.name == after[0]) & (Resource.id > after[1])))
    return list(session.scalars(stmt))


def list_outages(
    session: Session, resource_id: str, start: dt.datetime | None, end: dt.datetime | None
) -> list[Outage]:
    """Live outages of a resource, optionally those overlapping ``[start, end)``."""
    stmt = (
        select(Outage)
        .where(Outage.resource_id == resource_id, Outage.deleted_at.is_(None))
        .order_by(Outage.start_at)
    )
    if start is not None:
        stmt = stmt.where(Outage.end_at > start)
    if end is not None:
        stmt = stmt.where(Outage.start_at < end)
    return list(session.scalars(stmt))


def list_qualifications(session: Session, resource_id: str) -> list[Qualification]:
    """Current (not revoked) qualifications of a resource."""
    stmt = (
        select(Qualification)
        .where(Qualification.resource_id == resource_id, Qualification.revoked_at.is_(None))
        .order_by(Qualification.sub)
    )
    return list(session.scalars(stmt))
