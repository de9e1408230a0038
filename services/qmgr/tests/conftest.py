from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message, Recipient
from postfleet.core.queueid import new_queue_id


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


async def queue_message(
    engine: AsyncEngine, rcpts: list[str], sender: str = "alice@x.test",
    arrived: datetime | None = None, lifetime: timedelta = timedelta(days=5),
) -> str:
    now = arrived or datetime.now(UTC)
    qid = new_queue_id()
    async with engine.begin() as conn:
        await conn.execute(insert(Message).values(
            queue_id=qid, sender=sender, size=20, body=b"Subject: s\r\n\r\nbody\r\n",
            client_name="", client_addr="", helo="", protocol="", sasl_username="",
            trace_id="t", content_filter="", ret="", envid="", state="incoming",
            arrived_at=now, expires_at=now + lifetime))
        await conn.execute(insert(Recipient), [
            dict(queue_id=qid, address=r, orig_rcpt=r, orcpt="", notify="", status="pending",
                 transport="", nexthop="", attempts=0, next_attempt_at=now, dsn_status="",
                 last_reply="") for r in rcpts])
    return qid
