"""The work counters on /metrics count what a role really sends: queue-store
statements and commits (on SQLite and PostgreSQL) and NATS messages."""

from __future__ import annotations

import asyncio

import nats
from prometheus_client import REGISTRY
from sqlalchemy import text

from postfleet.core.bus.connect import connect
from postfleet.core.db.engine import create_engine
from postfleet.core.testing.nats import NatsServer, settle


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_statements_and_commits_are_counted(database_url: str) -> None:
    engine = create_engine(database_url)
    statements, commits = _value("postfleet_db_statements_total"), _value(
        "postfleet_db_commits_total")
    try:
        async with engine.begin() as conn:
            for n in range(3):
                await conn.execute(text("SELECT CAST(:n AS INTEGER)"), {"n": n})
        async with engine.connect() as conn:  # rolled back: no commit
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
    assert _value("postfleet_db_statements_total") - statements >= 4
    assert _value("postfleet_db_commits_total") - commits == 1


async def test_bus_messages_in_and_out_are_counted(nats_server: NatsServer) -> None:
    client = await connect(nats_server.url, "workcounts-test")
    peer = await nats.connect(nats_server.url)
    try:
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            await got.put(msg.data)

        await client.subscribe("workcounts.in", cb=on_msg)
        await settle(client)  # the server has the subscription (not flush(): see settle)
        out0, in0 = _value("postfleet_bus_messages_total", direction="out"), _value(
            "postfleet_bus_messages_total", direction="in")
        for _ in range(5):
            await client.publish("workcounts.out", b"x")
            await peer.publish("workcounts.in", b"y")
        for _ in range(5):
            await asyncio.wait_for(got.get(), 5)
        assert _value("postfleet_bus_messages_total", direction="out") - out0 == 5
        assert _value("postfleet_bus_messages_total", direction="in") - in0 == 5
    finally:
        await peer.close()
        await client.close()


async def test_settle_returns_once_the_server_has_a_subscription(
        nats_server: NatsServer) -> None:
    """nats-py's flush() can return before a SUB reached the server (its PING
    overtakes the buffer); settle() cannot. Many rounds, each with a new
    subject, a publisher on another connection and no wait between."""
    client = await connect(nats_server.url, "settle-test")
    peer = await nats.connect(nats_server.url)
    try:
        for n in range(200):
            got: asyncio.Queue[bytes] = asyncio.Queue()

            async def on_msg(msg: nats.aio.msg.Msg, got: asyncio.Queue[bytes] = got) -> None:
                await got.put(msg.data)

            sub = await client.subscribe(f"settle.{n}", cb=on_msg)
            await settle(client)
            await peer.publish(f"settle.{n}", b"y")
            await asyncio.wait_for(got.get(), 5)
            await sub.unsubscribe()
    finally:
        await peer.close()
        await client.close()
