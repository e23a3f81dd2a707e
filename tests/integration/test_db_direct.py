"""``shared.db.execute_direct`` on the machine's PostgreSQL: the write path's statements run on the psycopg
connection under the session, and must behave as SQLAlchemy would (types, errors, lost connections)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, bindparam, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.db import Database, UTCDateTime, advisory_lock, execute_direct, insert_rows, inserts_together

pytestmark = pytest.mark.integration

metadata = MetaData()
things = Table(
    "things", metadata,
    Column("id", String(36), primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("data", JSON, nullable=True),
)
_BY_ID = select(things.c.id, things.c.at, things.c.data).where(things.c.id == bindparam("id"))
_PID = text("SELECT pg_backend_pid()")


@pytest.fixture
def db(pg_url) -> Iterator[Database]:
    database = Database(pg_url)
    metadata.create_all(database.engine)
    yield database
    database.dispose()


def test_rows_go_in_and_come_out_with_their_types(db):
    at = dt.datetime(2031, 3, 30, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    with db.begin() as session:
        # The connection's own time zone must not leak into what comes back.
        session.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
        insert_rows(session, things, [{"id": "a", "at": at, "data": {"rule": "slot", "n": [1, 2]}},
                                      {"id": "b", "at": at, "data": None}])
        (row,) = execute_direct(session, _BY_ID, {"id": "a"})
    assert row.id == "a"
    assert row.at == at and row.at.tzinfo == dt.UTC and row.at.hour == 21
    assert row.data == {"rule": "slot", "n": [1, 2]}
    # ... and SQLAlchemy's own execution reads the same row.
    with db.read() as session:
        same = session.execute(select(things).where(things.c.id == "a")).one()
    assert (same.at, same.data) == (at, {"rule": "slot", "n": [1, 2]})
    with db.read() as session:
        assert execute_direct(session, _BY_ID, {"id": "nobody"}) == []


def test_a_refused_row_is_an_integrity_error_and_nothing_of_the_transaction_stays(db):
    at = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    with db.begin() as session:
        insert_rows(session, things, [{"id": "taken", "at": at, "data": None}])
    with pytest.raises(IntegrityError) as refused, db.begin() as session:
        insert_rows(session, things, [{"id": "new", "at": at, "data": None}])
        insert_rows(session, things, [{"id": "taken", "at": at, "data": None}])
    assert "duplicate key" in str(refused.value.orig)
    with db.read() as session:
        assert [r.id for r in session.execute(select(things.c.id).order_by(things.c.id))] == ["taken"]


def test_a_connection_lost_mid_transaction_is_invalidated_and_replaced(db):
    with db.begin() as session:
        (first,) = execute_direct(session, _PID, {})
    with pytest.raises(DBAPIError) as lost, db.begin() as session:
        (pid,) = execute_direct(session, _PID, {})
        with db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid[0]})
        execute_direct(session, _BY_ID, {"id": "x"})
    assert lost.value.connection_invalidated
    # The pool hands out a working connection, not the dead one.
    with db.begin() as session:
        (again,) = execute_direct(session, _PID, {})
        assert again[0] != pid[0]
        assert execute_direct(session, _BY_ID, {"id": "x"}) == []
    assert first[0] == pid[0]  # the test did kill the connection the pool had been reusing


counters = Table(
    "counters", metadata,
    Column("key", String(36), primary_key=True),
    Column("n", Integer, nullable=False),
)
_COUNT_UP = "ON CONFLICT (key) DO UPDATE SET n = counters.n + 1"


def test_inserts_together_arrive_together_or_not_at_all(db):
    at = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    with db.begin() as session, inserts_together(session):
        insert_rows(session, things, [{"id": f"t{i}", "at": at, "data": {"i": i}} for i in range(20)])
        insert_rows(session, counters, [{"key": "k", "n": 1}], on_conflict=_COUNT_UP)
        with inserts_together(session):  # nested: still one flush, at the outer end
            insert_rows(session, counters, [{"key": "j", "n": 1}], on_conflict=_COUNT_UP)
    with db.begin() as session, inserts_together(session):
        insert_rows(session, counters, [{"key": "k", "n": 1}], on_conflict=_COUNT_UP)
    with db.read() as session:
        assert session.execute(select(func.count()).select_from(things)).scalar_one() == 20
        assert dict(session.execute(select(counters.c.key, counters.c.n)).all()) == {"k": 2, "j": 1}

    # A refused row anywhere: the error comes at the end of the block and nothing of it is written.
    with pytest.raises(IntegrityError), db.begin() as session, inserts_together(session):
        insert_rows(session, counters, [{"key": "k", "n": 1}], on_conflict=_COUNT_UP)
        insert_rows(session, things, [{"id": "new", "at": at, "data": None}, {"id": "t3", "at": at, "data": None}])
    with db.read() as session:
        assert session.execute(select(func.count()).select_from(things)).scalar_one() == 20
        assert session.execute(select(counters.c.n).where(counters.c.key == "k")).scalar_one() == 2


def test_an_advisory_lock_taken_with_begin_holds_until_the_transaction_ends(db):
    key = "booking:it's \\ odd"  # quoted by psycopg, not by hand
    granted = threading.Event()
    seen: list[int] = []

    def second() -> None:
        with db.begin() as session:
            # BEGIN, the lock and a read in one round trip: the read's snapshot is taken after the lock.
            rows = advisory_lock(session, key, then="SELECT n FROM counters WHERE key = 'written-under-the-lock'")
            granted.set()
            seen.extend(int(n) for (n,) in rows)

    with db.begin() as session:
        advisory_lock(session, key)
        (pid,) = execute_direct(session, _PID, {})
        # BEGIN went with the lock: the lock is this connection's, inside an open transaction.
        held = session.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = :pid"),
                               {"pid": pid[0]}).scalar_one()
        assert held == 1
        assert session.execute(text("SELECT now() = statement_timestamp()")).scalar_one() is False
        thread = threading.Thread(target=second)
        thread.start()
        assert not granted.wait(0.5)  # the other transaction waits for this one
        insert_rows(session, counters, [{"key": "written-under-the-lock", "n": 7}])
    assert granted.wait(10)
    thread.join(10)
    assert seen == [7]  # it read after the lock was granted, so it saw what the first one committed
    # Later in a transaction the lock is an ordinary statement; a different key does not wait.
    with db.begin() as session:
        execute_direct(session, _PID, {})
        advisory_lock(session, key)
        assert advisory_lock(session, "another key", then="SELECT n FROM counters") == [(7,)]
