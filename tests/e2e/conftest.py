"""End-to-end fixtures: a whole postfleet (every role a real process) on a
real NATS and a real database, with real SMTP sinks as next hops."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import DeliveryLog, Message, Recipient
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import publish_snapshot
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.waiting import eventually

__all__ = ["eventually"]

# Postfix's timers, shortened so retries happen within a test.
FAST_QMGR = {"queue_run_delay": "1s", "minimal_backoff_time": "1s",
             "maximal_backoff_time": "2s"}


def relay_config(sink: SmtpSink, **routing: Any) -> dict[str, Any]:
    """Relay example.test to the sink; mail from 127.0.0.1 is not trusted
    (mynetworks excludes it) so the relay restrictions really apply."""
    base = {
        "relay_domains": ["example.test"],
        "transport_maps": {"example.test": f"smtp:{sink.nexthop}"},
        "mynetworks": ["10.255.255.0/24"],
    }
    base.update(routing)
    return {"myhostname": "mx.postfleet.test", "qmgr": dict(FAST_QMGR), "routing": base}


async def publish_routes(cluster: Cluster) -> None:
    from postfleet.core.bus.connect import connect, ensure_bus

    routing = dict(cluster.config.get("routing") or {})
    routing.setdefault("myhostname", cluster.config.get("myhostname", "mx.postfleet.test"))
    nc = await connect(cluster.nats_url, "e2e")
    try:
        await publish_snapshot(await ensure_bus(nc), RoutingSnapshot.from_config(routing))
    finally:
        await nc.close()


async def start(cluster: Cluster, *roles: str) -> Cluster:
    await publish_routes(cluster)
    await asyncio.to_thread(cluster.start, *roles)
    return cluster


async def queue_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            msgs = (await conn.execute(select(func.count()).select_from(Message))).scalar_one()
            rcpts = (await conn.execute(select(func.count()).select_from(Recipient))
                     ).scalar_one()
        return {"messages": msgs, "recipients": rcpts}
    finally:
        await engine.dispose()


async def delivery_log(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(select(DeliveryLog).order_by(DeliveryLog.id))).all())
    finally:
        await engine.dispose()


async def send(port: int, to: str, subject: str = "e2e", sender: str = "alice@sender.test",
               body: str = "hello") -> str:
    """Send one message with aiosmtplib; return the queue id from the 250 reply."""
    import aiosmtplib

    data = (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\n{body}\r\n").encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
        _, reply = await smtp.sendmail(sender, [to], data)
    return reply.rsplit(" ", 1)[1]
