"""Async engines for the queue store: PostgreSQL in production, SQLite embedded.

SQLite runs in WAL mode with synchronous=FULL so a commit is on disk before
cleanup answers 250 (invariant 1), and with a busy timeout because several
role processes share the file. Nothing connects at import time.

A PostgreSQL connection (asyncpg) taken from the pool is checked first only when it
has sat idle for PING_AFTER_IDLE_S: SQLAlchemy's pool_pre_ping checked every
checkout, and with asyncpg that is three round trips (BEGIN, an empty
query, ROLLBACK) before each transaction. A connection used within the last
second that has died since (the server restarted) fails its statement
instead; SQLAlchemy then recycles the whole pool, and the caller's own
retry applies (cleanup answers 4xx, qmgr scans again, delivery retries the
job), as for a server lost mid-transaction.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.dialects import registry
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util.concurrency import await_

from postfleet.core.workcounts import count_commit, count_statement

SQLITE_BUSY_TIMEOUT_MS = 30_000
# A pooled PostgreSQL connection idle this long is pinged before use.
PING_AFTER_IDLE_S = 1.0
_IDLE_SINCE = "postfleet_idle_since"  # in the connection record's info


def register_sqlite_driver() -> None:
    registry.register("sqlite.postfleet", "postfleet.core.db.sqlite_driver", "dialect")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, *, pool_size: int = 5, writer: bool = True) -> AsyncEngine:
    """Make an engine for a database URL (``postgresql+asyncpg://`` or
    ``sqlite+aiosqlite:///path``), creating an SQLite file's directory.

    ``writer=False`` (delivery's and the filter's job reads): no transaction
    at all (``AUTOCOMMIT``), each statement its own snapshot, as READ
    COMMITTED gives them on PostgreSQL anyway. A read never queues behind
    SQLite's write lock, and on PostgreSQL a one-statement read is one round
    trip (two after the connection sat idle and is pinged first) where it
    was six (pool_pre_ping's and the statement's, each inside its own
    BEGIN ... ROLLBACK) -- a delivery job's read, once per message."""
    parsed = make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    asyncpg = parsed.get_driver_name() == "asyncpg"
    # Readers (delivery's many concurrent jobs) may need more connections
    # than a writer does.
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": pool_size}
    if not writer:
        kwargs["isolation_level"] = "AUTOCOMMIT"
    if sqlite:
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        # sqlite+aiosqlite URLs are served by postfleet's own driver
        # (sqlite_driver.py: a thread hop only where SQLite may wait).
        register_sqlite_driver()
        parsed = parsed.set(drivername="sqlite+postfleet")
    elif not asyncpg:
        kwargs["pool_pre_ping"] = True  # another driver: SQLAlchemy's own check
    engine = create_async_engine(parsed, **kwargs)
    # Statements and commits per message, on /metrics (core.workcounts).
    event.listen(engine.sync_engine, "after_cursor_execute", count_statement)
    event.listen(engine.sync_engine, "commit", count_commit)
    if asyncpg:
        for name, listener in (("connect", _idle_from_now), ("checkin", _idle_from_now),
                               ("checkout", _ping_if_idle)):
            event.listen(engine.sync_engine, name, listener)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if writer:
            event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    return engine


def _idle_from_now(_dbapi_conn: Any, record: Any) -> None:
    record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
    if time.monotonic() - record.info.get(_IDLE_SINCE, 0.0) < PING_AFTER_IDLE_S:
        return
    try:  # one round trip, outside any transaction
        await_(dbapi_conn.driver_connection.fetchrow(";"))
    except Exception as error:
        # The pool drops this connection and every older one, then connects anew.
        raise exc.InvalidatePoolError(f"ping failed: {error!r}") from error


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is switched off so BEGIN IMMEDIATE
    # below takes the write lock up front (no deadlocking lock upgrades
    # between processes).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Straight to the driver's cursor: through exec_driver_sql, SQLAlchemy
    # built a whole execution context for it, a sixth of every transaction's
    # statement overhead. Still counted as a statement (core.workcounts).
    cursor = conn.connection.cursor()
    try:
        cursor.execute("BEGIN IMMEDIATE")
    finally:
        cursor.close()
    count_statement()


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)
