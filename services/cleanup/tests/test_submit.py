"""cleanup's Submit over real gRPC into a real queue store (SQLite and PostgreSQL),
with the wake-up on a real NATS server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.cleanup.submit import CleanupService
from postfleet.core.bus import subjects
from postfleet.core.bus.connect import connect
from postfleet.core.db.engine import create_engine, register_sqlite_driver, sessionmaker
from postfleet.core.db.models import Message, Recipient
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.ports import free_port


def _request(body: bytes, rcpts: list[str], chunk: int = 7, sender: str = "alice@x.test",
             **dsn: str) -> list[cleanup_pb2.SubmitRequest]:
    env = cleanup_pb2.Envelope(
        sender=sender,
        recipients=[cleanup_pb2.Recipient(address=r, notify=dsn.get("notify", ""),
                                          orcpt=dsn.get("orcpt", "")) for r in rcpts],
        ret=dsn.get("ret", ""), envid=dsn.get("envid", ""),
        client=cleanup_pb2.ClientInfo(name="c.test", address="127.0.0.1", helo="c.test",
                                      protocol="ESMTP"),
    )
    parts = [cleanup_pb2.SubmitRequest(envelope=env)]
    parts += [cleanup_pb2.SubmitRequest(chunk=body[i:i + chunk])
              for i in range(0, len(body), chunk)]
    return parts


async def _stream(parts: list[cleanup_pb2.SubmitRequest]) -> AsyncIterator[
        cleanup_pb2.SubmitRequest]:
    for p in parts:
        yield p


@pytest.fixture
async def cleanup(database_url: str, nats_server: NatsServer) -> AsyncIterator[
        tuple[cleanup_pb2_grpc.CleanupStub, str, asyncio.Queue[bytes]]]:
    # Lifetimes other than the defaults: the expiry follows what is configured.
    settings = CleanupSettings(database_url=database_url, myhostname="mx.test",
                               message_size_limit=1000, maximal_queue_lifetime="2d",
                               bounce_queue_lifetime="3h")
    engine = create_engine(database_url)
    nc = await connect(nats_server.url, "test")
    wakeups: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: object) -> None:
        await wakeups.put(b"wake")

    await nc.subscribe(subjects.QUEUE_INCOMING, cb=on_msg)

    async def wake(_n: int) -> None:
        await nc.publish(subjects.QUEUE_INCOMING, b"")

    writer = QueueWriter(engine, on_commit=wake)
    writer.start()
    server = grpc.aio.server()
    cleanup_pb2_grpc.add_CleanupServicer_to_server(CleanupService(settings, writer), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cleanup_pb2_grpc.CleanupStub(channel), database_url, wakeups
    finally:
        await channel.close()
        await server.stop(None)
        await writer.stop()
        await nc.close()
        await engine.dispose()


async def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            m = (await s.execute(select(func.count()).select_from(Message))).scalar_one()
            r = (await s.execute(select(func.count()).select_from(Recipient))).scalar_one()
        return m, r
    finally:
        await engine.dispose()


async def test_submit_commits_message_and_recipients_then_wakes_qmgr(cleanup: tuple) -> None:
    stub, url, wakeups = cleanup
    body = b"Subject: t\r\n\r\nhello\r\n"
    reply = await stub.Submit(_stream(_request(body, ["b@y.test", "c@y.test"])))
    assert len(reply.queue_id) == 15
    await asyncio.wait_for(wakeups.get(), 5)
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            msg = await s.get(Message, reply.queue_id)
            rcpts = (await s.execute(select(Recipient.address).order_by(Recipient.id))).all()
    finally:
        await engine.dispose()
    assert msg is not None and msg.sender == "alice@x.test"
    head = msg.body.split(b"\r\n\r\n")[0]
    assert head.startswith(b"Received: from c.test (c.test [127.0.0.1])")
    assert b"\r\nSubject: t\r\nMessage-ID: <" in head and b"\r\nDate: " in head
    assert b"id " + reply.queue_id.encode() in msg.body
    assert msg.body.endswith(b"\r\n\r\nhello\r\n")
    assert [r[0] for r in rcpts] == ["b@y.test", "c@y.test"]


async def test_the_queue_id_smtpd_asked_for_is_the_message_s(cleanup: tuple) -> None:
    """smtpd logged client= with it before the hand-off; anything that is not
    a queue id is not taken."""
    from postfleet.core.queueid import QUEUE_ID_METADATA, new_queue_id

    stub, _, _ = cleanup
    asked = new_queue_id()
    reply = await stub.Submit(_stream(_request(b"Subject: a\r\n\r\nx\r\n", ["b@y.test"])),
                              metadata=((QUEUE_ID_METADATA, asked),))
    assert reply.queue_id == asked
    reply = await stub.Submit(_stream(_request(b"Subject: b\r\n\r\nx\r\n", ["b@y.test"])),
                              metadata=((QUEUE_ID_METADATA, "../etc"),))
    assert len(reply.queue_id) == 15 and reply.queue_id != "../etc"


async def test_concurrent_submissions_each_get_their_own_committed_message(
        cleanup: tuple) -> None:
    stub, url, _ = cleanup
    replies = await asyncio.gather(*[
        stub.Submit(_stream(_request(b"Subject: %d\r\n\r\nx\r\n" % i, [f"u{i}@y.test"])))
        for i in range(40)
    ])
    assert len({r.queue_id for r in replies}) == 40
    assert await _counts(url) == (40, 40)


async def test_oversize_message_is_refused_and_nothing_is_queued(cleanup: tuple) -> None:
    stub, url, _ = cleanup
    reply = await stub.Submit(_stream(_request(b"x" * 2000, ["b@y.test"], chunk=500)))
    assert not reply.queue_id
    assert (reply.refusal.code, reply.refusal.status, reply.refusal.text,
            reply.refusal.temporary) == (552, "5.3.4", "Message size exceeds fixed limit", False)
    assert await _counts(url) == (0, 0)


async def test_envelope_without_recipients_is_refused(cleanup: tuple) -> None:
    stub, url, _ = cleanup
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Submit(_stream(_request(b"x\r\n", [])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _counts(url) == (0, 0)


async def test_database_failure_answers_aborted_and_writes_nothing(
        tmp_path: Path) -> None:
    # A queue store that cannot be written: the directory is a file.
    blocker = tmp_path / "notadir"
    blocker.write_text("")
    url = f"sqlite+aiosqlite:///{blocker}/queue.db"
    settings = CleanupSettings(database_url=url)
    # The production driver, without create_engine's mkdir (which would
    # fail on the file first).
    register_sqlite_driver()
    engine = create_async_engine(url.replace("+aiosqlite", "+postfleet"))
    writer = QueueWriter(engine)
    writer.start()
    server = grpc.aio.server()
    cleanup_pb2_grpc.add_CleanupServicer_to_server(CleanupService(settings, writer), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await cleanup_pb2_grpc.CleanupStub(ch).Submit(
                    _stream(_request(b"x\r\n", ["a@b.test"])))
        assert err.value.code() == grpc.StatusCode.ABORTED
    finally:
        await server.stop(None)
        await writer.stop()
        await engine.dispose()


def test_queue_lifetimes_default_to_postfix_s_five_days() -> None:
    from postfleet.cleanup.settings import CleanupSettings

    settings = CleanupSettings()
    assert settings.maximal_queue_lifetime == settings.bounce_queue_lifetime == 5 * 86400


async def test_expiry_and_dsn_parameters_as_given(cleanup: tuple) -> None:
    """maximal_queue_lifetime for mail, bounce_queue_lifetime for mail from
    the null sender (Postfix's cleanup); RFC 3461 parameters kept."""
    stub, url, _ = cleanup
    mail = await stub.Submit(_stream(_request(
        b"x\r\n", ["b@y.test"], ret="HDRS", envid="E1", notify="SUCCESS,DELAY",
        orcpt="rfc822;B@y.test")))
    bounce = await stub.Submit(_stream(_request(b"x\r\n", ["alice@x.test"], sender="")))
    engine = create_engine(url)
    try:
        async with sessionmaker(engine)() as s:
            msgs = {m.queue_id: m for m in (await s.execute(select(Message))).scalars()}
            rcpt = (await s.execute(select(Recipient).where(
                Recipient.queue_id == mail.queue_id))).scalar_one()
    finally:
        await engine.dispose()
    lifetime = {qid: (m.expires_at - m.arrived_at).total_seconds() for qid, m in msgs.items()}
    assert lifetime == {mail.queue_id: 2 * 86400, bounce.queue_id: 3 * 3600}
    assert (msgs[mail.queue_id].ret, msgs[mail.queue_id].envid) == ("HDRS", "E1")
    assert (rcpt.notify, rcpt.orcpt) == ("SUCCESS,DELAY", "rfc822;B@y.test")


async def test_a_small_message_in_one_request_is_queued_as_a_streamed_one(
        cleanup: tuple) -> None:
    stub, url, _ = cleanup
    parts = _request(b"Subject: whole\r\n\r\nin one request\r\n", ["b@y.test", "c@y.test"])
    whole = cleanup_pb2.WholeMessage(envelope=parts[0].envelope,
                                     body=b"".join(p.chunk for p in parts[1:]))
    reply = await stub.SubmitMessage(whole)
    assert reply.queue_id and not reply.HasField("refusal")
    assert await _counts(url) == (1, 2)
    too_big = cleanup_pb2.WholeMessage(envelope=parts[0].envelope, body=b"x" * 2000)
    refused = await stub.SubmitMessage(too_big)
    assert not refused.queue_id
    assert (refused.refusal.code, refused.refusal.status) == (552, "5.3.4")
    assert await _counts(url) == (1, 2)


async def test_a_resend_of_a_committed_message_answers_its_queue_id_and_queues_nothing(
        cleanup: tuple) -> None:
    """smtpd lost the answer (cleanup died after the commit) and sends the same
    message again under the same id: the client hears 250 once, one copy."""
    from postfleet.core.queueid import QUEUE_ID_METADATA, RESEND_METADATA, new_queue_id

    stub, url, _ = cleanup
    asked = new_queue_id()
    parts = _request(b"Subject: once\r\n\r\nx\r\n", ["b@y.test", "c@y.test"])
    first = await stub.Submit(_stream(parts), metadata=((QUEUE_ID_METADATA, asked),))
    again = await stub.Submit(_stream(parts), metadata=((QUEUE_ID_METADATA, asked),
                                                        (RESEND_METADATA, "1")))
    assert first.queue_id == again.queue_id == asked
    assert await _counts(url) == (1, 2)


async def test_a_resend_of_a_message_never_committed_is_queued(cleanup: tuple) -> None:
    """cleanup died before the commit: the resend is the only copy."""
    from postfleet.core.queueid import QUEUE_ID_METADATA, RESEND_METADATA, new_queue_id

    stub, url, _ = cleanup
    asked = new_queue_id()
    parts = _request(b"Subject: lost\r\n\r\nx\r\n", ["b@y.test"])
    whole = cleanup_pb2.WholeMessage(envelope=parts[0].envelope,
                                     body=b"".join(p.chunk for p in parts[1:]))
    reply = await stub.SubmitMessage(whole, metadata=((QUEUE_ID_METADATA, asked),
                                                      (RESEND_METADATA, "1")))
    assert reply.queue_id == asked
    assert await _counts(url) == (1, 1)


async def test_a_resend_of_a_message_already_delivered_is_not_queued_again(
        cleanup: tuple) -> None:
    """By the time the resend comes the first copy may be gone from the queue
    (delivered and removed): its delivery log rows still say it was queued."""
    from postfleet.core.db.models import DeliveryLog
    from postfleet.core.queueid import QUEUE_ID_METADATA, RESEND_METADATA, new_queue_id

    stub, url, _ = cleanup
    asked = new_queue_id()
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(DeliveryLog.__table__.insert().values(
                queue_id=asked, recipient_id=1, address="b@y.test", attempt=1,
                transport="smtp", relay="y.test[192.0.2.1]:25", delay=0.1, dsn="2.0.0",
                status="sent", reply="250 ok", logged_at=datetime.now(UTC)))
    finally:
        await engine.dispose()
    parts = _request(b"Subject: gone\r\n\r\nx\r\n", ["b@y.test"])
    reply = await stub.Submit(_stream(parts), metadata=((QUEUE_ID_METADATA, asked),
                                                        (RESEND_METADATA, "1")))
    assert reply.queue_id == asked
    assert await _counts(url) == (0, 0)
