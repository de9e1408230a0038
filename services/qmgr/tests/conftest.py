from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.engine import create_engine
from postfleet.core.db.queue import NewMessage, NewRecipient, enqueue
from postfleet.core.queueid import new_queue_id


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


async def queue_message(
    engine: AsyncEngine, rcpts: list[str | NewRecipient], sender: str = "alice@x.test",
    arrived: datetime | None = None, lifetime: timedelta = timedelta(days=5),
    ret: str = "", envid: str = "", body: bytes = b"Subject: s\r\n\r\nbody\r\n",
) -> str:
    """Queue a message the way cleanup does (the queue store's enqueue);
    a recipient may come with its DSN parameters (NewRecipient)."""
    now = arrived or datetime.now(UTC)
    message = NewMessage(
        queue_id=new_queue_id(), sender=sender, body=body,
        recipients=[r if isinstance(r, NewRecipient) else NewRecipient(r) for r in rcpts],
        arrived_at=now, expires_at=now + lifetime, client_name="c.test",
        client_addr="192.0.2.9", trace_id="t", ret=ret, envid=envid)
    async with engine.begin() as conn:
        await enqueue(conn, [message])
    return message.queue_id
