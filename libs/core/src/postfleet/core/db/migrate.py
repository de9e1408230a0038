"""Schema migrations (Alembic), run programmatically at start-up.

``postfleet run all`` migrates before starting roles; each role also calls
``upgrade`` so a role started on its own against an empty database works.
Alembic serialises concurrent upgrades with the version table; on
PostgreSQL an advisory lock keeps replicas from racing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postfleet.core.db.engine import is_sqlite

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x706F7374666C  # "postfl"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    async with engine.connect() as conn:
        if not is_sqlite(str(engine.url)):
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
        try:
            await conn.run_sync(_upgrade_sync, revision)
            await conn.commit()
        finally:
            if not is_sqlite(str(engine.url)):
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                await conn.commit()


def _upgrade_sync(sync_conn: object, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _get(sync_conn: object) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()  # type: ignore[arg-type]

    return await conn.run_sync(_get)
