"""Schema migrations (Alembic), run programmatically at start-up.

``postfleet run all`` migrates before starting roles; each role also calls
``upgrade`` so a role started on its own against an empty database works.
Roles started together race to migrate an empty store, so an upgrade runs
under a lock: a PostgreSQL advisory lock, or on SQLite an exclusive flock
on a file beside the database (Alembic runs SQLite's migrations one
transaction each, since SQLite's DDL is not transactional for it, so the
version table alone does not keep a second process from applying a
revision it read as missing). Whoever waited finds the schema at head.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postfleet.core.db.engine import is_sqlite

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision in migrations/versions (a test keeps it true). Roles
# compare the database against it and import Alembic only when behind:
# Alembic and Mako cost each role ~13 MiB of memory for nothing otherwise.
HEAD = "0002"
_PG_LOCK_KEY = 0x706F7374666C  # "postfl"


def alembic_config() -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def at_head(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))
                       ).scalar()
    except DBAPIError:
        return False  # no schema yet
    return version == HEAD


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    if revision == "head" and await at_head(engine):
        return
    async with _sqlite_lock(engine), engine.connect() as conn:
        if not is_sqlite(str(engine.url)):
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            await conn.run_sync(_upgrade_sync, revision)
            await conn.commit()
        finally:
            if not is_sqlite(str(engine.url)):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                await conn.commit()


@contextlib.asynccontextmanager
async def _sqlite_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """An exclusive flock on ``<database>.migrate-lock`` (SQLite files only)."""
    database = make_url(str(engine.url)).database if is_sqlite(str(engine.url)) else None
    if not database or database == ":memory:":
        yield
        return
    fd = os.open(f"{database}.migrate-lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _upgrade_sync(sync_conn: object, revision: str) -> None:
    from alembic import command

    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _get(sync_conn: object) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()  # type: ignore[arg-type]

    return await conn.run_sync(_get)
