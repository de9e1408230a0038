"""Roles started together on an empty SQLite store all migrate it: none
fails applying a revision another process applied meanwhile. (Without the
migration lock this failed about one run in five here: a process reads the
version, then another slips in between its per-revision transactions.)"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

import pytest

from postfleet.core.db.migrate import HEAD
from postfleet.core.testing.waiting import eventually

pytestmark = pytest.mark.slow

# Each process imports everything, says it is ready, and waits for "go", so
# all of them find the store empty at the same moment.
MIGRATE = """
import asyncio, pathlib, sys, time
import alembic.command
from postfleet.core.db.engine import create_engine
from postfleet.core.db.migrate import upgrade

async def main():
    engine = create_engine(sys.argv[1])
    barrier = pathlib.Path(sys.argv[2])
    (barrier / sys.argv[3]).touch()
    while not (barrier / "go").exists():
        time.sleep(0.005)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()

asyncio.run(main())
"""


async def test_processes_migrating_one_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", MIGRATE, f"sqlite+aiosqlite:///{db}", str(barrier), f"ready{n}",
        stderr=asyncio.subprocess.PIPE) for n in range(12)]
    await eventually(lambda: len(list(barrier.iterdir())) == len(procs), 60,
                     what="every process ready")
    (barrier / "go").touch()
    results = [await p.communicate() for p in procs]
    failures = [err.decode()[-400:] for (_, err), p in zip(results, procs, strict=True)
                if p.returncode != 0]
    assert failures == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
