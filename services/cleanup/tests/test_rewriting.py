"""cleanup rewrites envelopes with the routing snapshot it follows in NATS KV:
canonical, virtual alias and alias mapping, live changes, Postfix's limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from nats.js import JetStreamContext
from sqlalchemy import select

from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.cleanup.submit import CleanupService
from postfleet.core.bus.connect import connect, ensure_bus
from postfleet.core.db.engine import create_engine, sessionmaker
from postfleet.core.db.migrate import upgrade
from postfleet.core.db.models import Message, Recipient
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView, publish_snapshot
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply
from postfleet.core.testing.databases import sqlite_url
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.ports import free_port

ROUTES = RoutingSnapshot(
    myhostname="smtp.univ.es", myorigin="univ.es", mydestination=["$myhostname", "univ.es"],
    sender_canonical_maps={"rgarcia@univ.es": "r.garcia@univ.es"},
    virtual_alias_domains=["fund-univ.es"],
    virtual_alias_maps={"gerente@fund-univ.es": ["rgarcia"],
                        "todos@fund-univ.es": ["gerente@fund-univ.es", "jheras@pastorro.com"]},
    alias_maps={"postmaster": ["root"]},
)


@dataclass
class Rig:
    stub: cleanup_pb2_grpc.CleanupStub
    url: str
    js: JetStreamContext
    routing: RoutingView

    async def submit(self, sender: str, rcpts: list[str]) -> str:
        reply = await self.submit_reply(sender, rcpts)
        assert reply.queue_id, reply
        return reply.queue_id

    async def submit_reply(self, sender: str, rcpts: list[str]) -> cleanup_pb2.SubmitReply:
        env = cleanup_pb2.Envelope(
            sender=sender, recipients=[cleanup_pb2.Recipient(address=r) for r in rcpts],
            client=cleanup_pb2.ClientInfo(name="c.test", address="192.0.2.1", helo="c.test",
                                          protocol="ESMTP"))

        async def parts() -> AsyncIterator[cleanup_pb2.SubmitRequest]:
            yield cleanup_pb2.SubmitRequest(envelope=env)
            yield cleanup_pb2.SubmitRequest(chunk=b"Subject: t\r\n\r\nhi\r\n")

        return await self.stub.Submit(parts())

    async def queued(self, queue_id: str) -> tuple[str, list[tuple[str, str]]]:
        engine = create_engine(self.url)
        try:
            async with sessionmaker(engine)() as s:
                msg = await s.get(Message, queue_id)
                rows = (await s.execute(
                    select(Recipient.address, Recipient.orig_rcpt)
                    .where(Recipient.queue_id == queue_id).order_by(Recipient.id))).all()
        finally:
            await engine.dispose()
        assert msg is not None
        return msg.sender, [(a, o) for a, o in rows]

    async def publish(self, snapshot: RoutingSnapshot) -> None:
        stored = await publish_snapshot(self.js, snapshot)
        for _ in range(100):
            if self.routing.snapshot.version == stored.version:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the KV watch did not deliver the new snapshot")


@pytest.fixture
async def rig(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Rig]:
    url = sqlite_url(tmp_path)
    engine = create_engine(url)
    await upgrade(engine)
    nc = await connect(nats_server.url, "test")
    js = await ensure_bus(nc)
    await publish_snapshot(js, ROUTES)
    routing = RoutingView()
    await routing.start(js)
    writer = QueueWriter(engine)
    writer.start()
    server = grpc.aio.server()
    settings = CleanupSettings(database_url=url, myhostname="smtp.univ.es")
    cleanup_pb2_grpc.add_CleanupServicer_to_server(CleanupService(settings, writer, routing),
                                                   server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Rig(cleanup_pb2_grpc.CleanupStub(channel), url, js, routing)
    finally:
        await channel.close()
        await server.stop(None)
        await writer.stop()
        await routing.stop()
        await nc.close()
        await engine.dispose()


async def test_envelope_is_rewritten_with_the_snapshot_from_kv(rig: Rig) -> None:
    assert rig.routing.snapshot.version == 1
    qid = await rig.submit("rgarcia", ["todos@fund-univ.es", "Postmaster", "x@far.example"])
    sender, rows = await rig.queued(qid)
    assert sender == "r.garcia@univ.es"  # @$myorigin, then sender_canonical_maps
    assert rows == [
        ("rgarcia@univ.es", "todos@fund-univ.es"),
        ("jheras@pastorro.com", "todos@fund-univ.es"),
        ("root@univ.es", "Postmaster"),  # alias_maps, for the local transport
        ("x@far.example", "x@far.example"),
    ]


async def test_duplicates_of_one_original_recipient_are_queued_once(rig: Rig) -> None:
    qid = await rig.submit("", ["gerente@fund-univ.es", "gerente@fund-univ.es",
                                "rgarcia@univ.es"])
    sender, rows = await rig.queued(qid)
    assert sender == ""
    assert rows == [("rgarcia@univ.es", "gerente@fund-univ.es"),
                    ("rgarcia@univ.es", "rgarcia@univ.es")]


async def test_a_new_snapshot_changes_the_next_message(rig: Rig) -> None:
    await rig.publish(ROUTES.model_copy(update={
        "virtual_alias_maps": {"gerente@fund-univ.es": ["laurar"]}}))
    qid = await rig.submit("a@b.example", ["gerente@fund-univ.es"])
    assert (await rig.queued(qid))[1] == [("laurar@univ.es", "gerente@fund-univ.es")]


async def test_alias_loops_are_refused_with_postfix_reply(rig: Rig) -> None:
    await rig.publish(ROUTES.model_copy(update={"virtual_alias_maps": {
        "a@fund-univ.es": ["b@fund-univ.es"], "b@fund-univ.es": ["a@fund-univ.es"]}}))
    reply = await rig.submit_reply("a@b.example", ["a@fund-univ.es"])
    assert not reply.queue_id
    assert SmtpReply.from_proto(reply.refusal) == replies.ALIAS_EXPANSION_ERROR
    assert reply.refusal.temporary
