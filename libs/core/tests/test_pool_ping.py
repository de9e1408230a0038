"""PostgreSQL connections from the pool: one idle past PING_AFTER_IDLE_S is
pinged first (a dead one replaced before the caller sees it); one used a
moment ago is not pinged (no round trips before each transaction); and one
that died while busy fails one statement, after which the pool is whole
again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc, text
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db import engine as engine_module
from postfleet.core.db.engine import create_engine


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(postgres_url, pool_size=1)
    try:
        yield eng
    finally:
        await eng.dispose()


async def _backend_pid(eng: AsyncEngine) -> int:
    async with eng.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _kill(postgres_url: str, pid: int) -> None:
    other = create_engine(postgres_url)
    try:
        async with other.connect() as conn:
            assert (await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                    ).scalar_one()
    finally:
        await other.dispose()


async def test_a_dead_idle_connection_is_replaced_before_use(
    engine: AsyncEngine, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await _backend_pid(engine)
    await _kill(postgres_url, first)
    monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_S", 0.0)  # idle "long enough"
    assert await _backend_pid(engine) != first  # no error reached the caller


async def test_a_connection_used_a_moment_ago_is_not_pinged(engine: AsyncEngine) -> None:
    await _backend_pid(engine)
    queries: list[str] = []
    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        driver.add_query_logger(lambda record: queries.append(record.query))
    async with engine.begin() as conn:
        await conn.execute(text("SELECT 1"))
    assert ";" not in queries, queries


async def test_a_connection_dead_while_busy_fails_once_then_the_pool_heals(
    engine: AsyncEngine, postgres_url: str
) -> None:
    first = await _backend_pid(engine)
    await _kill(postgres_url, first)
    with pytest.raises(exc.DBAPIError) as failure:
        await _backend_pid(engine)  # used within the second: not pinged
    assert failure.value.connection_invalidated
    assert await _backend_pid(engine) not in (first, 0)
