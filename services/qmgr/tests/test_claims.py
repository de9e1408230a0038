"""Claims lease due recipients; replicas never share one; expired leases return."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message
from postfleet.core.db.queue import (
    claim_due,
    current_recipients,
    load_job,
    release,
    renew_leases,
    take_back,
)

from .conftest import queue_message


async def test_a_claim_leases_due_recipients_once(engine: AsyncEngine) -> None:
    qid = await queue_message(engine, ["a@y.test", "b@y.test"])
    now = datetime.now(UTC)
    first = await claim_due(engine, "q1", now, 60, 100)
    assert [(c.queue_id, c.address, c.attempt) for c in first] == [
        (qid, "a@y.test", 1), (qid, "b@y.test", 1)]
    assert await claim_due(engine, "q2", now, 60, 100) == []
    # The lease runs out (its qmgr died): the work is claimable again.
    again = await claim_due(engine, "q2", now + timedelta(seconds=61), 60, 100)
    assert [c.attempt for c in again] == [2, 2]


async def test_held_messages_and_future_attempts_are_not_claimed(engine: AsyncEngine) -> None:
    held = await queue_message(engine, ["a@y.test"])
    await queue_message(engine, ["later@y.test"], arrived=datetime.now(UTC) + timedelta(hours=1))
    async with engine.begin() as conn:
        await conn.execute(update(Message).where(Message.queue_id == held).values(state="hold"))
    assert await claim_due(engine, "q1", datetime.now(UTC), 60, 100) == []


async def test_release_gives_back_a_lease_without_counting_an_attempt(
        engine: AsyncEngine) -> None:
    await queue_message(engine, ["a@y.test"])
    now = datetime.now(UTC)
    claimed = await claim_due(engine, "q1", now, 600, 10)
    await release(engine, "q1", [c.id for c in claimed])
    retaken = await claim_due(engine, "q2", now, 600, 10)
    assert [c.attempt for c in retaken] == [1]


async def test_concurrent_claimers_on_one_queue_never_share_a_recipient(
        database_url: str, engine: AsyncEngine) -> None:
    for i in range(60):
        await queue_message(engine, [f"u{i}a@y.test", f"u{i}b@y.test"])
    engines = [create_engine(database_url) for _ in range(4)]
    try:
        now = datetime.now(UTC)

        async def claimer(n: int) -> list[int]:
            got: list[int] = []
            while True:
                batch = await claim_due(engines[n], f"q{n}", now, 600, 7)
                if not batch:
                    return got
                got += [c.id for c in batch]

        results = await asyncio.gather(*(claimer(n) for n in range(4)))
    finally:
        for e in engines:
            await e.dispose()
    every = [i for r in results for i in r]
    assert len(every) == 120 and len(set(every)) == 120


async def test_a_renewed_lease_is_not_retaken_while_its_owner_lives(
        engine: AsyncEngine) -> None:
    await queue_message(engine, ["a@y.test"])
    t0 = datetime.now(UTC)
    claimed = await claim_due(engine, "q1", t0, 60, 10)
    ids = [c.id for c in claimed]
    await renew_leases(engine, "q1", t0 + timedelta(seconds=50), 60, ids, [])
    assert await claim_due(engine, "q2", t0 + timedelta(seconds=61), 60, 10) == []
    # The owner died after that renewal: one lease later the work is retaken.
    again = await claim_due(engine, "q2", t0 + timedelta(seconds=111), 60, 10)
    assert [c.attempt for c in again] == [2]


async def test_a_restarted_owner_takes_its_work_back_at_once(engine: AsyncEngine) -> None:
    qid = await queue_message(engine, ["a@y.test", "b@y.test"])
    now = datetime.now(UTC)
    first = await claim_due(engine, "q1", now, 3600, 10)
    ids = [c.id for c in first]
    async with engine.connect() as conn:
        assert await current_recipients(conn, qid, ids, 1) == set(ids)
    assert await take_back(engine, "q1") == 2
    second = await claim_due(engine, "q1", now, 3600, 10)
    assert [c.attempt for c in second] == [2, 2]
    async with engine.connect() as conn:
        # The old attempt's job, if still on the bus, now speaks for no one.
        assert await current_recipients(conn, qid, ids, 1) == set()
        assert await current_recipients(conn, qid, ids, 2) == set(ids)
    assert await take_back(engine, "nobody") == 0


async def test_a_job_loads_its_content_and_its_current_recipients_at_once(
        engine: AsyncEngine) -> None:
    qid = await queue_message(engine, ["a@y.test", "b@y.test"])
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 3600, 10)
    ids = [c.id for c in claimed]
    async with engine.connect() as conn:
        body, current = await load_job(conn, qid, ids, 1)
        assert body == b"Subject: s\r\n\r\nbody\r\n" and current == set(ids)
        assert await load_job(conn, qid, ids[:1], 1) == (body, {ids[0]})
        assert await load_job(conn, qid, ids, 2) == (None, set())  # not this attempt
        assert await load_job(conn, "NOSUCHID", ids, 1) == (None, set())
