from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import uvicorn
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message, Recipient
from postfleet.core.db.queue import NewMessage, NewRecipient, enqueue
from postfleet.core.db.status import MessageState, RecipientStatus
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.queueid import new_queue_id
from postfleet.core.routing.store import RoutingView
from postfleet.core.testing.ports import wait_port
from postfleet.qmgr.api import make_api
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings


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


DEFER_REASON = "connect to z.test[192.0.2.1]:25: Connection refused"


async def fill(engine: AsyncEngine) -> dict[MessageState, str]:
    """One message in each queue (incoming, active, deferred, hold), each
    with recipients in y.test and z.test; the deferred one waits an hour."""
    ids = {}
    for state in MessageState:
        qid = await queue_message(engine, [f"{state}@y.test", f"{state}@z.test"],
                                  sender="" if state is MessageState.HOLD else f"{state}@x.test")
        async with engine.begin() as conn:
            await conn.execute(update(Message).where(Message.queue_id == qid)
                               .values(state=state))
            if state is MessageState.DEFERRED:
                await conn.execute(update(Recipient).where(Recipient.queue_id == qid).values(
                    status=RecipientStatus.DEFERRED, dsn_status="4.4.1",
                    next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
                    last_reply=DEFER_REASON))
        ids[state] = qid
    return ids


@pytest.fixture
def api_url(database_url: str) -> Iterator[str]:
    """qmgr's admin API served for real (uvicorn, a loopback port) by a
    thread with its own event loop and engine, as qmgr serves it; no
    scheduler runs, so the queue stays as the test leaves it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()
    holder: dict[str, uvicorn.Server] = {}

    async def serve() -> None:
        engine = create_engine(database_url)

        async def publish(_job: delivery_pb2.Job) -> None:
            return None

        scheduler = Scheduler(QmgrSettings(qmgr_owner="q1"), engine, RoutingView(), publish)
        server = uvicorn.Server(uvicorn.Config(make_api(engine, scheduler), log_level="error",
                                               lifespan="off"))
        holder["server"] = server
        ready.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            await engine.dispose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    holder["server"].should_exit = True
    thread.join(30)
