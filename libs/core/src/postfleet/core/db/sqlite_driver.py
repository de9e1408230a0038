"""The embedded queue store's SQLite driver: Python's own ``sqlite3`` under
SQLAlchemy's asyncio engine, with a thread hop only where SQLite may wait.

Why not aiosqlite alone: it runs every driver call in its worker thread, and
SQLAlchemy makes four or five such calls per statement (cursor, execute,
fetch, close) -- measured under bench/profile.py, about twenty thread
round trips per message and a fifth of qmgr's CPU in the hand-offs. What
SQLite actually waits for is two things only: the write lock (taken up front
by the writers' ``BEGIN IMMEDIATE``, engine.py) and the WAL flush of a
commit (``synchronous=FULL``). So:

- ``COMMIT`` runs in a worker thread (the event loop keeps serving while
  the disk syncs), and so does ``BEGIN IMMEDIATE`` when another process
  holds the write lock (tried first without waiting: when the lock is
  free, as it mostly is, it is taken inline);
- statements inside a transaction that holds the write lock run inline:
  nothing can block them, they take microseconds;
- any other statement (a reader's query, a write outside such a
  transaction) runs in a worker thread, executed and fetched in one hop.

No library does this split (aiosqlite hops for everything; pysqlite under
the sync engine blocks for everything), hence this module. The URLs stay
``sqlite+aiosqlite:///path``: engine.py routes them here.

Postfix parameters: none (the queue store is postfleet's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.util.concurrency import await_, in_greenlet

T = TypeVar("T")

# Statements that take the write lock up front (and may wait for it).
_LOCKING_BEGIN = ("BEGIN IMMEDIATE", "BEGIN EXCLUSIVE")
# Statements that never wait on another connection: a deferred BEGIN takes
# no lock, and a rollback only drops what this connection wrote.
_INLINE_ALWAYS = ("BEGIN", "ROLLBACK", "SAVEPOINT", "RELEASE")
# Statements after which a connection in a transaction holds the write lock.
_TAKES_WRITE_LOCK = (*_LOCKING_BEGIN, "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE",
                     "DROP", "ALTER")


class Worker:
    """The thread a connection's waits run on: one per connection, as
    aiosqlite has, so that calls on a connection stay in order and one
    connection waiting for the write lock never holds up another's commit.
    A daemon thread, outside asyncio's default executor: a call still
    waiting when the role stops (a lock held elsewhere, up to the busy
    timeout) holds up neither the loop's shutdown nor the process's exit."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name="sqlite", daemon=True).start()

    async def call(self, fn: Callable[..., T], *args: Any,
                   cancel: threading.Event | None = None) -> T:
        """``fn(*args)`` on this thread; if the caller is cancelled meanwhile,
        ``cancel`` is set for ``fn`` to give up early."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, done, fn, args))
        try:
            return await done
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise

    def stop(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, done, fn, args = call
            try:
                outcome, failure = fn(*args), None
            except BaseException as exc:  # handed to the caller, whatever it is
                outcome, failure = None, exc
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(_settle, done, outcome, failure)


def _settle(done: asyncio.Future[Any], outcome: Any, failure: BaseException | None) -> None:
    if done.done():  # the caller was cancelled meanwhile
        return
    if failure is not None:
        done.set_exception(failure)
    else:
        done.set_result(outcome)


def _hop(worker: Worker, fn: Callable[..., T], *args: Any,
         cancel: threading.Event | None = None) -> T:
    """Run ``fn`` on the connection's worker thread, the event loop serving
    meanwhile. Outside SQLAlchemy's greenlet (a pool reset at garbage
    collection), there is no loop to give back to: run it here."""
    if in_greenlet():
        return await_(worker.call(fn, *args, cancel=cancel))
    return fn(*args)


def _head(operation: str) -> str:
    """The statement's first words, upper case: what decides where it runs."""
    return operation.lstrip()[:16].upper()


async def _nothing() -> None:
    return None


def _yield_to_engine() -> None:
    """SQLAlchemy's asyncio engine checks that a statement awaited something
    (a guard against sync drivers); an inline statement hands its greenlet
    one finished coroutine -- a greenlet switch, no trip through the loop."""
    if in_greenlet():
        await_(_nothing())


class Cursor:
    """A DB-API cursor over sqlite3's. Rows are fetched with the statement
    (in the same hop, or inline), so reading them never waits."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._cursor = conn.raw.cursor()
        self._rows: deque[Any] = deque()
        self.arraysize = 1

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    def execute(self, operation: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> Cursor:
        self._run(self._cursor.execute, operation, parameters)
        return self

    def executemany(self, operation: str, seq: Sequence[Any]) -> Cursor:
        self._run(self._cursor.executemany, operation, seq)
        return self

    def _run(self, method: Callable[[str, Any], Any], operation: str, params: Any) -> None:
        conn, head = self._conn, _head(operation)
        if conn.writing or (head.startswith(_INLINE_ALWAYS)
                            and not head.startswith(_LOCKING_BEGIN)):
            self._rows = self._execute_and_fetch(method, operation, params)
            _yield_to_engine()
        elif head.startswith(_LOCKING_BEGIN):
            # Taken inline when no other writer holds the lock (most of the
            # time), else waited for on the worker.
            if conn.try_lock(operation):
                _yield_to_engine()
            else:
                cancel = threading.Event()
                _hop(conn.worker, conn.wait_for_lock, operation, cancel, cancel=cancel)
            self._rows = deque()
        else:
            self._rows = _hop(conn.worker, self._execute_and_fetch, method, operation, params)
        conn.after(head)

    def _execute_and_fetch(self, method: Callable[[str, Any], Any], operation: str,
                           params: Any) -> deque[Any]:
        method(operation, params)
        return deque(self._cursor.fetchall() if self._cursor.description else ())

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = min(size or self.arraysize, len(self._rows))
        return [self._rows.popleft() for _ in range(count)]

    def fetchall(self) -> list[Any]:
        rows, self._rows = list(self._rows), deque()
        return rows

    def __iter__(self) -> Iterator[Any]:
        while self._rows:
            yield self._rows.popleft()

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio result asks an async cursor to close while
        keeping its rows: they are all here already."""

    def close(self) -> None:
        self._rows.clear()
        self._cursor.close()


class Connection:
    """A DB-API connection over sqlite3's that knows whether it holds the
    write lock (then nothing it runs can wait)."""

    def __init__(self, raw: sqlite3.Connection, busy_timeout: float, worker: Worker) -> None:
        self.raw = raw
        self.worker = worker
        self.writing = False
        self.busy_timeout_ms = int(busy_timeout * 1000)

    # -- the write lock ------------------------------------------------------------
    def wait_for_lock(self, operation: str, cancel: threading.Event) -> None:
        """On the worker: BEGIN IMMEDIATE, retried as SQLite's own busy
        handler would (1 ms growing to 50 ms) until the busy timeout -- but
        given up as soon as the caller is cancelled (a role stopping), where
        SQLite's handler would hold the connection for the whole timeout. A
        lock won just as the caller went away is given back at once: nobody
        is left to commit or roll back."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.001
        while not cancel.is_set():
            if self.try_lock(operation):
                if cancel.is_set():
                    self.raw.rollback()
                    break
                return
            if time.monotonic() + pause > deadline:
                break
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        raise sqlite3.OperationalError("database is locked")

    def try_lock(self, operation: str) -> bool:
        """BEGIN IMMEDIATE without waiting; False (nothing done) when another
        connection holds the write lock."""
        self.raw.execute("PRAGMA busy_timeout=0")
        try:
            self.raw.execute(operation)
        except sqlite3.OperationalError as exc:
            if self.raw.in_transaction or "locked" not in str(exc):
                raise
            return False
        finally:
            self.raw.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return True

    def after(self, head: str) -> None:
        # BEGIN IMMEDIATE, or a write in a deferred transaction, leaves this
        # connection holding the write lock until it commits or rolls back.
        if not self.raw.in_transaction:
            self.writing = False
        elif head.startswith(_TAKES_WRITE_LOCK):
            self.writing = True

    # -- DB-API --------------------------------------------------------------------
    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        try:
            if self.raw.in_transaction:
                _hop(self.worker, self.raw.commit)
        finally:
            self.writing = self.raw.in_transaction

    def rollback(self) -> None:
        try:
            self.raw.rollback()
        finally:
            self.writing = self.raw.in_transaction

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            self.worker.stop()

    @property
    def isolation_level(self) -> str | None:
        return self.raw.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: Any) -> None:
        self.raw.isolation_level = value

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self.raw.create_function(*args, **kwargs)


class _DBAPI(types.ModuleType):
    """sqlite3 as SQLAlchemy sees it, its ``connect`` wrapped."""

    def __init__(self) -> None:
        super().__init__("postfleet_sqlite3")
        self.__dict__.update({k: v for k, v in vars(sqlite3).items()
                              if not k.startswith("__") and k != "connect"})

    def connect(self, *args: Any, **kwargs: Any) -> Connection:
        # Used from the loop thread and, for commits and lock waits, from a
        # worker thread -- never both at once (one checkout at a time).
        kwargs["check_same_thread"] = False
        worker = Worker()
        try:
            raw = _hop(worker, lambda: sqlite3.connect(*args, **kwargs))
        except BaseException:
            worker.stop()
            raise
        return Connection(raw, float(kwargs.get("timeout", 5.0)), worker)


class SQLiteDialect_postfleet(SQLiteDialect_pysqlite):
    driver = "postfleet"
    is_async = True
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection.raw


dialect = SQLiteDialect_postfleet
