"""The transactional outbox and inbox tables every service keeps in its own database.

A use case writes its change and the event describing it in one transaction
(``add_event``); a relay publishes unsent rows later. A consumer records each
event id in the inbox in the same transaction as its effect, so a redelivered
event is recognised and dropped.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    text,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db import UTCDateTime, insert_rows
from shared.timeutil import now


def define_outbox(metadata: MetaData) -> tuple[Table, Table]:
    """Create the ``outbox`` and ``inbox`` tables in a service's metadata."""
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("type", String(100), nullable=False),
        Column("payload", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("published_at", UTCDateTime, nullable=True),
        Index(
            "ix_outbox_unpublished",
            "id",
            postgresql_where=text("published_at IS NULL"),
            sqlite_where=text("published_at IS NULL"),
        ),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("event_id", String(64), primary_key=True),
        Column("type", String(100), nullable=False),
        Column("processed_at", UTCDateTime, nullable=False),
    )
    return outbox, inbox


def add_event(session: Session, outbox: Table, *events: dict[str, Any]) -> None:
    """Write ``events`` to the outbox inside the caller's transaction (one statement for all)."""
    stamp = now()
    rows = [
        {"event_id": e["id"], "type": e["type"], "payload": json.dumps(e, separators=(",", ":")), "created_at": stamp}
        for e in events
    ]
    if rows:
        insert_rows(session, outbox, rows)


def remember(session: Session, inbox: Table, event: dict[str, Any]) -> bool:
    """Record an incoming event id; False when it was already processed."""
    try:
        with session.begin_nested():
            session.execute(
                insert(inbox).values(event_id=event["id"], type=event.get("type", ""), processed_at=now())
            )
    except IntegrityError:
        return False
    return True
