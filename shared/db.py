"""SQLAlchemy 2 engine and session helpers shared by the services.

Each service owns its database: on PostgreSQL a schema named after the service
(``search_path`` is set per connection), on SQLite a file of its own. Writes on
SQLite take the database lock up front (``BEGIN IMMEDIATE``) so a check and the
write it guards can never interleave with another writer, in this process or
any other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from psycopg import RawCursor, pq
from psycopg import errors as psycopg_errors
from psycopg import generators as psycopg_generators
from psycopg import sql as psql
from sqlalchemy import (
    Connection,
    DateTime,
    Dialect,
    Engine,
    Executable,
    Table,
    TextClause,
    bindparam,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite stores a fixed-format UTC string,
    so string comparison orders it correctly (the overlap triggers rely on it).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the database layer")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base; each service subclasses it with its own metadata."""

    __abstract__ = True


class Database:
    """One service's database: an engine, and sessions for reads and for writes."""

    def __init__(self, url: str, schema: str | None = None, pool_size: int = 10) -> None:
        self.url = url
        self.schema = schema
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 60},
                pool_size=pool_size,
                max_overflow=20,
            )
            _configure_sqlite(self.engine)
            self.write_engine = self.engine.execution_options(labshare_immediate=True)
        else:
            connect_args = {}
            if schema:
                connect_args["options"] = f"-csearch_path={schema},public"
            self.engine = create_engine(
                psycopg_url(url),
                connect_args=connect_args,
                pool_size=pool_size,
                max_overflow=20,
            )
            _ping_when_idle(self.engine)
            self.write_engine = self.engine

    @contextlib.contextmanager
    def begin(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on any exception."""
        with Session(self.write_engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only unit of work (never commits)."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> bool:
        """True when the database answers."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def dispose(self) -> None:
        """Close every pooled connection (after fork, at shutdown)."""
        self.engine.dispose()


def upsert_insert(session: Session, table: Any) -> Any:
    """An INSERT of the session's dialect that supports ``on_conflict_do_update``/``_do_nothing``
    (PostgreSQL or SQLite); ``table`` is a Table or a mapped class."""
    return pg_insert(table) if session.get_bind().dialect.name == "postgresql" else sqlite_insert(table)


#: The statements of ``insert_rows``, by the shapes of the INSERTs they make (table, dialect, number of
#: rows, columns, ``on_conflict``).
_INSERTS: dict[tuple, TextClause] = {}
#: Rows per INSERT of ``insert_rows`` (more go as several).
INSERT_BATCH = 16
#: Most INSERTs ``inserts_together`` joins into one statement (more go as several statements).
TOGETHER_MAX = 4


def insert_rows(session: Session, table: Table, rows: Sequence[Mapping[str, Any]], on_conflict: str = "") -> None:
    """INSERT ``rows`` (dicts with the same keys) as one multi-row ``INSERT ... VALUES``, compiled once.

    ``on_conflict`` is an SQL clause both dialects read alike, e.g. ``ON CONFLICT (k) DO NOTHING`` or
    ``ON CONFLICT (k) DO UPDATE SET n = t.n + 1`` (name the table to mean the existing row). Inside
    ``inserts_together`` on PostgreSQL the INSERT waits for the end of that block.

    The write path's INSERTs go through here (and ``execute_direct``). Each shape's
    statement is built once as text with typed bind parameters and compiled once;
    a multi-row ``insert().values()`` is compiled anew on every call, and an
    executemany goes through psycopg's pipeline, whose wait spins on the CPU until
    the server answers.
    """
    dialect = session.get_bind().dialect
    pending = session.info.get(_PENDING)
    for first in range(0, len(rows), INSERT_BATCH):
        chunk = rows[first:first + INSERT_BATCH]
        keys = tuple(chunk[0])
        part = ((table, dialect.name, len(chunk), keys, on_conflict), [row[k] for row in chunk for k in keys])
        if pending is not None:
            pending.append(part)
        else:
            _insert(session, [part])


_PENDING = "labshare_pending_inserts"


@contextlib.contextmanager
def inserts_together(session: Session) -> Iterator[None]:
    """On PostgreSQL, ``insert_rows`` within the block only collects its INSERTs; when the block ends
    they go to the server as one statement (all but the last in a ``WITH``): one round trip and one
    execution instead of one per table. Nothing in the block may read back what it inserted, and an
    INSERT's error (a refused row) comes when the block ends. Elsewhere each INSERT runs at once.
    """
    if session.get_bind().dialect.name != "postgresql" or session.info.get(_PENDING) is not None:
        yield
        return
    pending: list = []
    session.info[_PENDING] = pending
    try:
        yield
    finally:
        del session.info[_PENDING]
    for first in range(0, len(pending), TOGETHER_MAX):
        _insert(session, pending[first:first + TOGETHER_MAX])


def _insert(session: Session, parts: list[tuple[tuple, list[Any]]]) -> None:
    shapes = tuple(shape for shape, _ in parts)
    stmt = _INSERTS.get(shapes)
    if stmt is None:
        stmt = _INSERTS[shapes] = _insert_statement(shapes, session.get_bind().dialect)
    execute_direct(session, stmt, {f"p{j}_{n}": value for j, (_, values) in enumerate(parts)
                                   for n, value in enumerate(values)})


def _insert_statement(shapes: tuple[tuple, ...], dialect: Dialect) -> TextClause:
    quote = dialect.identifier_preparer.quote
    inserts, binds = [], []
    for j, (table, _, count, keys, on_conflict) in enumerate(shapes):
        names = iter(f"p{j}_{n}" for n in range(count * len(keys)))
        values = ", ".join("(" + ", ".join(f":{next(names)}" for _ in keys) + ")" for _ in range(count))
        inserts.append(f"INSERT INTO {quote(table.name)} ({', '.join(quote(k) for k in keys)}) "
                       f"VALUES {values} {on_conflict}".strip())
        binds += [bindparam(f"p{j}_{i * len(keys) + n}", type_=table.c[k].type)
                  for i in range(count) for n, k in enumerate(keys)]
    sql = inserts[-1]
    if len(inserts) > 1:
        sql = "WITH " + ", ".join(f"w{j} AS ({s})" for j, s in enumerate(inserts[:-1])) + " " + sql
    return text(sql).bindparams(*binds)


class _DriverStatement(NamedTuple):
    sql: str
    binds: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]  # name, default value, bind processor
    results: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[[Sequence[Any]], tuple] | None


#: ``execute_direct``'s statements, compiled once per statement and dialect.
_DRIVER: dict[tuple[int, str], tuple[Executable, _DriverStatement]] = {}
_PLACEHOLDER = re.compile(r"%%|%s")


def _for_driver(stmt: Executable, dialect: Dialect) -> _DriverStatement:
    key = (id(stmt), dialect.name)
    found = _DRIVER.get(key)
    if found is None or found[0] is not stmt:
        # Compiled with positional parameters, then numbered ($1, $2, ...) as the server reads them, so
        # psycopg passes the query through untouched.
        compiled = stmt.compile(dialect=type(dialect)(paramstyle="format"))
        numbers = iter(range(1, len(compiled.positiontup or ()) + 1))
        sql = _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", compiled.string)
        binds = tuple((name, compiled.binds[name].value,
                       compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                      for name in compiled.positiontup or ())
        columns = list(getattr(stmt, "selected_columns", ()))
        results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
        row = namedtuple("Row", [c.key for c in columns], rename=True)._make if columns else None
        found = _DRIVER[key] = (stmt, _DriverStatement(sql, binds, results, row))
    return found[1]


def execute_direct(session: Session, stmt: Executable, params: Mapping[str, Any]) -> list[tuple]:
    """Run a Core statement or ``text()`` built once (a module-level constant) in the session's
    transaction; its rows as named tuples with SQLAlchemy's result types applied.

    On PostgreSQL it goes straight to the psycopg connection under the session,
    with the statement compiled once (server-side parameters, prepared by psycopg
    after a few uses) and the parameters converted by their types' bind
    processors: the write path's statements skip SQLAlchemy's per-execution
    machinery and psycopg's query conversion. Errors come out as SQLAlchemy's
    (``IntegrityError`` for a refused row), and a lost connection is invalidated
    as SQLAlchemy would. Elsewhere it is an ordinary ``Connection.execute``.
    """
    conn = session.connection()
    dialect = conn.dialect
    if dialect.name != "postgresql":
        result = conn.execute(stmt, params)
        return list(result) if result.returns_rows else []
    prepared = _for_driver(stmt, dialect)
    values = []
    for name, default, process in prepared.binds:
        value = params.get(name, default)
        values.append(process(value) if process is not None and value is not None else value)
    fairy = conn.connection
    raw = fairy.driver_connection
    cur = fairy.info.get("labshare_cursor")
    if cur is None or cur.closed or cur.connection is not raw:
        cur = fairy.info["labshare_cursor"] = RawCursor(raw)
    try:
        cur.execute(prepared.sql, values)
        result = cur.pgresult  # (not cur.description: that builds a Column per column each time)
        rows = cur.fetchall() if result is not None and result.status == pq.ExecStatus.TUPLES_OK else []
    except dialect.loaded_dbapi.Error as exc:
        raise _as_sqlalchemy_error(conn, exc, prepared.sql, values, cur) from exc
    if prepared.row is None:
        return rows
    results, make = prepared.results, prepared.row
    return [make([p(v) if p is not None else v for p, v in zip(results, r, strict=True)]) for r in rows]


def _as_sqlalchemy_error(conn: Connection, exc: Exception, statement: str, params: Any,
                         cursor: Any = None) -> DBAPIError:
    """A psycopg error as SQLAlchemy would raise it (``IntegrityError`` and so on); a lost connection is
    invalidated first, so the pool replaces it."""
    dialect = conn.dialect
    gone = dialect.is_disconnect(exc, conn.connection.driver_connection, cursor)
    if gone:
        conn.invalidate(exc)
    return DBAPIError.instance(statement, params, exc, dialect.loaded_dbapi.Error, connection_invalidated=gone,
                               dialect=dialect)


_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def advisory_lock(session: Session, key: str, then: str = "") -> list[tuple]:
    """Hold a transaction-scoped PostgreSQL advisory lock on ``key`` until the session's transaction ends;
    then run ``then`` (a constant query without parameters, if given) and return its rows.

    As the transaction's first statement, BEGIN, the lock and ``then`` go to the
    server in one round trip (one simple query; the key is quoted by psycopg)
    instead of psycopg's BEGIN followed by each statement; later in a transaction
    they are ordinary statements. The lock is taken before anything the
    transaction reads next: ``then`` and what follows see what was committed
    before the lock was granted (each statement of a simple query has its own
    snapshot). Values of the fast path's rows are strings.
    """
    conn = session.connection()
    fairy = conn.connection
    raw = fairy.driver_connection
    if raw.pgconn.transaction_status != pq.TransactionStatus.IDLE or raw.autocommit:
        execute_direct(session, _LOCK, {"key": key})
        return [tuple(row) for row in conn.exec_driver_sql(then)] if then else []
    command = b"BEGIN; SELECT pg_advisory_xact_lock(hashtextextended(" + psql.Literal(key).as_bytes(raw) + b", 0))"
    if then:
        command += b"; " + then.encode()
    dialect = conn.dialect
    try:
        with raw.lock:
            raw.pgconn.send_query(command)
            results = raw.wait(psycopg_generators.execute(raw.pgconn))
        for result in results:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                raise psycopg_errors.error_from_result(result, encoding=raw.info.encoding)
    except dialect.loaded_dbapi.Error as exc:
        raise _as_sqlalchemy_error(conn, exc, command.decode(), None) from exc
    if not then:
        return []
    last, encoding = results[-1], raw.info.encoding
    return [tuple(None if (v := last.get_value(i, j)) is None else bytes(v).decode(encoding)
                  for j in range(last.nfields)) for i in range(last.ntuples)]


def psycopg_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: A pooled connection idle for longer than this is tested before use.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Test a pooled connection before use when it has sat idle for a while.

    A connection the server dropped (a restart, a failover, an idle timeout) is
    replaced before a request sees it, like SQLAlchemy's ``pool_pre_ping``; but a
    connection handed straight back and forth under load, which cannot have gone
    stale unnoticed, skips the extra round trip that ``pool_pre_ping`` spends on
    every checkout.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _test_if_idle(dbapi_conn, record, _proxy) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_conn.autocommit = True  # so the test opens no transaction to roll back: one round trip
            try:
                with dbapi_conn.cursor() as cur:
                    cur.execute("SELECT 1")
            finally:
                dbapi_conn.autocommit = False
        except Exception as exc:
            # The pool discards this connection and tries another (or a new one).
            raise DisconnectionError(f"pooled connection failed its test: {exc}") from exc


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN itself.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get("labshare_immediate")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def admin_engine(url: str) -> Engine:
    """An autocommit engine for DDL outside a transaction (CREATE SCHEMA/DATABASE)."""
    return create_engine(psycopg_url(url), isolation_level="AUTOCOMMIT", poolclass=NullPool)
