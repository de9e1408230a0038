"""The embedded store's SQLite driver (core/db/sqlite_driver.py): statements
inside a write transaction run on the event loop's thread; waiting for the
write lock, committing and reading outside a write transaction happen in a
worker thread, so the loop keeps serving while SQLite waits."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from postfleet.core.db import sqlite_driver
from postfleet.core.db.engine import create_engine


def _engine_with_thread_probe(path: Path, *, writer: bool = True) -> Any:
    engine = create_engine(f"sqlite+aiosqlite:///{path}", writer=writer)

    @event.listens_for(engine.sync_engine, "connect")
    def _probe(dbapi_conn: Any, _record: Any) -> None:
        # SELECT tid(): the thread the statement ran on.
        dbapi_conn.create_function("tid", 0, threading.get_ident)

    return engine


async def test_statements_in_a_write_transaction_run_on_the_loop_thread(tmp_path: Path) -> None:
    engine = _engine_with_thread_probe(tmp_path / "q.db")
    here = threading.get_ident()
    try:
        async with engine.begin() as conn:  # BEGIN IMMEDIATE: the write lock is ours
            await conn.execute(text("CREATE TABLE t (a INTEGER)"))
            await conn.execute(text("INSERT INTO t VALUES (1), (2)"))
            inside = (await conn.execute(text("SELECT tid()"))).scalar()
            rows = (await conn.execute(text("SELECT a FROM t ORDER BY a"))).scalars().all()
        reader = _engine_with_thread_probe(tmp_path / "q.db", writer=False)
        async with reader.connect() as conn:  # no transaction: a reader, no lock held
            outside = (await conn.execute(text("SELECT tid()"))).scalar()
            seen = (await conn.execute(text("SELECT count(*) FROM t"))).scalar()
        await reader.dispose()
    finally:
        await engine.dispose()
    assert inside == here and rows == [1, 2]
    assert outside != here and seen == 2


async def test_waiting_for_the_write_lock_leaves_the_loop_serving(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (a INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's writer, as it were
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def write() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))

    ticker = asyncio.create_task(tick())
    writer = asyncio.create_task(write())
    try:
        await asyncio.sleep(0.3)
        assert not writer.done()  # still waiting for the lock...
        assert ticks >= 10  # ...while the loop went on serving
        holder.execute("COMMIT")
        await asyncio.wait_for(writer, 10)
    finally:
        ticker.cancel()
        holder.close()
        await engine.dispose()
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    check.close()


async def test_a_rolled_back_write_transaction_leaves_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (a INTEGER)"))
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
                raise RuntimeError("abandon")
        async with engine.begin() as conn:  # the lock was given back: a new writer gets it
            await conn.execute(text("INSERT INTO t VALUES (2)"))
            values = (await conn.execute(text("SELECT a FROM t"))).scalars().all()
    finally:
        await engine.dispose()
    assert values == [2]


async def test_a_free_write_lock_is_taken_inline_and_only_the_commit_hops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "q.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (a INTEGER)"))
    hops: list[str] = []
    real_hop = sqlite_driver._hop

    def counting_hop(worker: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(fn, "__name__", "?"))
        return real_hop(worker, fn, *args, **kwargs)

    monkeypatch.setattr(sqlite_driver, "_hop", counting_hop)
    try:
        async with engine.begin() as conn:  # nobody holds the lock: no hop to take it
            await conn.execute(text("INSERT INTO t VALUES (1)"))
            assert hops == []
        assert hops == ["commit"]

        hops.clear()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.2, holder.execute, "COMMIT")
        async with engine.begin() as conn:  # held: the wait for it is a hop
            await conn.execute(text("INSERT INTO t VALUES (2)"))
        holder.close()
        assert hops == ["wait_for_lock", "commit"]
    finally:
        await engine.dispose()


@pytest.mark.slow
def test_a_role_stopping_while_waiting_for_the_lock_exits_at_once(tmp_path: Path) -> None:
    """A connection waiting for a write lock held elsewhere (up to the busy
    timeout, 30 s) holds up neither the loop's end nor the process's exit:
    its worker is a daemon thread outside asyncio's default executor."""
    script = f"""
import asyncio, sqlite3
from sqlalchemy import text
from postfleet.core.db.engine import create_engine

path = {str(tmp_path / "q.db")!r}
holder = sqlite3.connect(path, isolation_level=None)
holder.execute("PRAGMA journal_mode=WAL")  # as the queue store runs
holder.execute("CREATE TABLE t (a INTEGER)")
holder.execute("BEGIN IMMEDIATE")

async def main():
    engine = create_engine("sqlite+aiosqlite:///" + path)
    async def write():
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
    writer = asyncio.get_running_loop().create_task(write())
    await asyncio.sleep(0.5)
    assert not writer.done(), writer  # waiting for the lock

asyncio.run(main())
print("exited")
"""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "exited", done.stderr
    assert time.monotonic() - started < 15  # not the 30 s busy timeout


def test_a_lock_won_as_its_waiter_is_cancelled_is_given_back(tmp_path: Path) -> None:
    """The worker wins the write lock just as the caller went away (a role
    stopping): nobody would commit or roll back, so it is released at once
    and the caller hears it failed."""
    path = tmp_path / "q.db"
    raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    raw.execute("PRAGMA journal_mode=WAL")
    worker = sqlite_driver.Worker()
    conn = sqlite_driver.Connection(raw, 30, worker)
    cancel = threading.Event()
    real_try = conn.try_lock

    def won_as_cancelled(operation: str) -> bool:
        won = real_try(operation)
        cancel.set()  # the caller was cancelled while this try ran
        return won

    conn.try_lock = won_as_cancelled  # type: ignore[method-assign]
    try:
        with pytest.raises(sqlite3.OperationalError):
            conn.wait_for_lock("BEGIN IMMEDIATE", cancel)
        assert not raw.in_transaction
        other = sqlite3.connect(path, isolation_level=None, timeout=0)
        other.execute("BEGIN IMMEDIATE")  # the lock is free again
        other.execute("ROLLBACK")
        other.close()
    finally:
        conn.close()
