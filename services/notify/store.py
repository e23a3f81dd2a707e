"""Notify's tables. Functions take a session and never commit."""

from __future__ import annotations

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from shared.outbox import define_outbox


class Base(DeclarativeBase):
    """Notify's own metadata."""

    metadata = MetaData()


OUTBOX, INBOX = define_outbox(Base.metadata)
