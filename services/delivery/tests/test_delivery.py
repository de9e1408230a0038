"""The delivery role end to end on real sockets, a real NATS and a real queue
store: jobs in on postfleet.delivery.smtp, mail out to an SMTP sink, results
out on postfleet.results."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import ensure_streams
from postfleet.core.db.status import Outcome
from postfleet.core.testing.cluster import RoleProcess
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.scripted import scripted_server
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.waiting import eventually

from .conftest import BODY, Bus, StartAgent, make_job, open_bus, queue_message

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def relay_of(sink: SmtpSink) -> str:
    return f"127.0.0.1[127.0.0.1]:{sink.port}"


async def test_delivers_exact_body_and_reports_sent(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    queued = await queue_message(engine, ["bob@dest.test"])
    job = make_job(queued, smtp_sink.nexthop)
    await bus.publish_job(job)

    (result,) = await bus.results(1)
    assert result.job_id == job.job_id
    assert result.queue_id == queued.queue_id
    assert result.attempt == 1
    assert result.transport == "smtp"
    assert result.relay == relay_of(smtp_sink)
    assert result.started_at <= result.finished_at
    (rr,) = result.recipients
    assert (rr.id, rr.address, Outcome.from_proto(rr.outcome), rr.dsn) == (
        queued.recipients[0][0], "bob@dest.test", "sent", "2.0.0")
    assert rr.reply == "250 2.0.0 Ok: queued"

    (got,) = smtp_sink.messages
    assert got.sender == "alice@origin.test"
    assert got.recipients == ["bob@dest.test"]
    assert got.data == BODY  # dot-stuffed once on the wire, unstuffed by the sink
    await bus.wait_idle()  # the job was acked


async def test_null_sender(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    queued = await queue_message(engine, ["bob@dest.test"], sender="")
    await bus.publish_job(make_job(queued, smtp_sink.nexthop))
    (result,) = await bus.results(1)
    assert Outcome.from_proto(result.recipients[0].outcome) == "sent"
    assert smtp_sink.messages[0].sender in ("", "<>")  # aiosmtpd keeps the brackets


async def test_each_recipient_gets_its_own_outcome(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.rcpt_replies.update({
        "later@dest.test": "450 4.2.0 <later@dest.test>: Mailbox busy",
        "nobody@dest.test": "550 5.1.1 <nobody@dest.test>: Recipient address rejected",
    })
    await start_agent()
    queued = await queue_message(
        engine, ["ok@dest.test", "later@dest.test", "nobody@dest.test"])
    await bus.publish_job(make_job(queued, smtp_sink.nexthop))

    (result,) = await bus.results(1)
    by_addr = {r.address: r for r in result.recipients}
    assert [r.id for r in result.recipients] == [rid for rid, _ in queued.recipients]
    ok, later, nobody = (by_addr[a] for a in ("ok@dest.test", "later@dest.test",
                                               "nobody@dest.test"))
    assert (Outcome.from_proto(ok.outcome), ok.dsn, ok.reply) == (
        "sent", "2.0.0", "250 2.0.0 Ok: queued")
    label = "host 127.0.0.1[127.0.0.1]"
    assert (Outcome.from_proto(later.outcome), later.dsn) == ("deferred", "4.2.0")
    assert later.reply == (f"{label} said: 450 4.2.0 <later@dest.test>: Mailbox busy "
                           "(in reply to RCPT TO command)")
    assert (Outcome.from_proto(nobody.outcome), nobody.dsn) == ("bounced", "5.1.1")
    assert "550 5.1.1 <nobody@dest.test>: Recipient address rejected" in nobody.reply
    (got,) = smtp_sink.messages
    assert got.recipients == ["ok@dest.test"]


@sqlite_only
async def test_data_reply_applies_to_every_accepted_recipient(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    smtp_sink.handler.data_replies.extend(
        ["451 4.3.0 Error: queue file write error", "554 5.7.1 Message content rejected"])
    await start_agent()
    rcpts = ["a@dest.test", "b@dest.test"]
    first = await queue_message(engine, rcpts)
    await bus.publish_job(make_job(first, smtp_sink.nexthop))
    (deferred,) = await bus.results(1)
    second = await queue_message(engine, rcpts)
    await bus.publish_job(make_job(second, smtp_sink.nexthop))
    _, bounced = await bus.results(2)

    assert [Outcome.from_proto(r.outcome) for r in deferred.recipients] == ["deferred", "deferred"]
    assert {r.dsn for r in deferred.recipients} == {"4.3.0"}
    assert deferred.recipients[0].reply == (
        "host 127.0.0.1[127.0.0.1] said: 451 4.3.0 Error: queue file write error "
        "(in reply to end of DATA command)")
    assert [Outcome.from_proto(r.outcome) for r in bounced.recipients] == ["bounced", "bounced"]
    assert {r.dsn for r in bounced.recipients} == {"5.7.1"}
    assert smtp_sink.messages == []


@sqlite_only
async def test_connection_refused_defers_with_postfix_text(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent
) -> None:
    await start_agent()
    port = free_port()  # nothing listens there
    queued = await queue_message(engine, ["a@dest.test", "b@dest.test"])
    await bus.publish_job(make_job(queued, f"[127.0.0.1]:{port}"))
    (result,) = await bus.results(1)
    assert result.relay == "none"
    for rr in result.recipients:
        assert (Outcome.from_proto(rr.outcome), rr.dsn) == ("deferred", "4.4.1")
        assert rr.reply == f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    await bus.wait_idle()


@sqlite_only
async def test_greeting_refusal_and_lost_connection_defer(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent
) -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 go away\r\n")
        await writer.drain()
        await reader.readline()

    async def drop_at_rcpt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"RCPT"):
                return  # hang up mid-transaction
            writer.write(b"250 ok\r\n")
            await writer.drain()

    async with scripted_server(refuse) as refusing, scripted_server(drop_at_rcpt) as dropping:
        port1, port2 = refusing.port, dropping.port
        await start_agent()
        one = await queue_message(engine, ["a@dest.test"])
        await bus.publish_job(make_job(one, f"[127.0.0.1]:{port1}"))
        (r1,) = await bus.results(1)
        two = await queue_message(engine, ["a@dest.test"])
        await bus.publish_job(make_job(two, f"[127.0.0.1]:{port2}"))
        _, r2 = await bus.results(2)

    assert r1.relay == f"127.0.0.1[127.0.0.1]:{port1}"
    assert (Outcome.from_proto(r1.recipients[0].outcome),
            r1.recipients[0].dsn) == ("deferred", "4.0.0")
    assert r1.recipients[0].reply == "host 127.0.0.1[127.0.0.1] refused to talk to me: 554 go away"
    assert (Outcome.from_proto(r2.recipients[0].outcome),
            r2.recipients[0].dsn) == ("deferred", "4.4.2")
    assert r2.recipients[0].reply == (
        "lost connection with 127.0.0.1[127.0.0.1] while sending RCPT TO")


@sqlite_only
async def test_a_job_for_a_message_gone_delivers_nothing_and_says_so(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    gone = await queue_message(engine, ["a@dest.test"])
    gone.queue_id = "NOSUCHQUEUEID"
    await bus.publish_job(make_job(gone, smtp_sink.nexthop))
    real = await queue_message(engine, ["a@dest.test"])
    await bus.publish_job(make_job(real, smtp_sink.nexthop))

    results = {r.queue_id: r for r in await bus.results(2)}
    # The repeat's result is empty: it only frees the job's destination slot.
    assert list(results["NOSUCHQUEUEID"].recipients) == []
    assert len(results[real.queue_id].recipients) == 1
    await bus.wait_idle()  # both jobs acked
    assert len(smtp_sink.messages) == 1


@sqlite_only
async def test_job_is_acked_only_after_its_result_is_published(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink,
    nats_server: NatsServer,
) -> None:
    # No results stream: every result publish fails.
    await bus.js.delete_stream(subjects.RESULTS_STREAM)
    await start_agent(delivery_ack_wait=1.0, delivery_result_retry_time=0.0)
    queued = await queue_message(engine, ["a@dest.test"])
    job = make_job(queued, smtp_sink.nexthop)
    await bus.publish_job(job)

    await smtp_sink.wait_for(1, timeout=10)
    await asyncio.sleep(0.3)
    info = await bus.consumer_info()
    assert info.num_ack_pending == 1 or info.num_redelivered >= 1  # not acked

    # The results stream comes back: the redelivered job completes.
    await ensure_streams(bus.js)
    fresh = await open_bus(nats_server.url)
    try:
        (result,) = await fresh.results(1, timeout=15)
    finally:
        await fresh.nc.close()
    assert result.job_id == job.job_id
    assert Outcome.from_proto(result.recipients[0].outcome) == "sent"
    await bus.wait_idle()
    # At-least-once: delivered again on redelivery, never lost.
    assert len(smtp_sink.messages) >= 2


@sqlite_only
async def test_connections_are_reused(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    concurrency, count = 5, 60
    agent = await start_agent(default_process_limit=concurrency)
    jobs = []
    for _ in range(count):
        queued = await queue_message(engine, ["a@dest.test"])
        jobs.append(make_job(queued, smtp_sink.nexthop))
    await asyncio.gather(*(bus.publish_job(j) for j in jobs))

    results = await bus.results(count, timeout=30)
    assert {Outcome.from_proto(r.recipients[0].outcome) for r in results} == {"sent"}
    assert len(smtp_sink.messages) == count
    sessions = {m.peer for m in smtp_sink.messages}  # client address:port = one connection
    assert len(sessions) <= concurrency
    assert agent.pool.open_count <= concurrency
    assert agent.pool.idle_count() >= 1  # kept for the next job


@sqlite_only
async def test_idle_connections_are_closed(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    agent = await start_agent(smtp_connection_cache_time_limit=0.3)
    queued = await queue_message(engine, ["a@dest.test"])
    await bus.publish_job(make_job(queued, smtp_sink.nexthop))
    await bus.results(1)
    await bus.wait_idle()
    assert agent.pool.idle_count() == 1
    await eventually(lambda: agent.pool.open_count == 0, 5,
                     "the idle session to be closed (cache time limit 0.3 s)")


@sqlite_only
async def test_sigterm_finishes_jobs_in_flight(
    engine: AsyncEngine, bus: Bus, smtp_sink: SmtpSink, nats_server: NatsServer,
    database_url: str, tmp_path: Path,
) -> None:
    """``python -m postfleet.delivery`` as a process: ready once consuming; on
    SIGTERM it stops fetching, finishes the delivery in hand, publishes its
    result, acks, and exits 0."""
    original = smtp_sink.handler.handle_DATA
    in_data = threading.Event()  # the sink runs in its own thread

    async def slow_data(server: Any, session: Any, envelope: Any) -> str:
        in_data.set()
        await asyncio.sleep(1.0)
        return await original(server, session, envelope)

    smtp_sink.handler.handle_DATA = slow_data  # type: ignore[method-assign]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
    port = free_port()
    env.update(
        POSTFLEET_DATABASE_URL=database_url, POSTFLEET_NATS_URL=nats_server.url,
        POSTFLEET_HTTP_PORT=str(port), POSTFLEET_MYHOSTNAME="mx.postfleet.test",
        POSTFLEET_LOG_FORMAT="text", POSTFLEET_DELIVERY_FETCH_TIMEOUT="0.5",
    )
    role = RoleProcess("delivery", env, tmp_path / "delivery.log", port)
    await asyncio.to_thread(role.start)
    try:
        queued = await queue_message(engine, ["a@dest.test"])
        await bus.publish_job(make_job(queued, smtp_sink.nexthop))
        # SIGTERM only once the delivery is really in hand: mid-DATA at the sink.
        assert await asyncio.to_thread(in_data.wait, 10), role.log()
        returncode = await asyncio.to_thread(role.stop)
    finally:
        role.kill()
    assert returncode == 0, role.log()
    (result,) = await bus.results(1)
    assert Outcome.from_proto(result.recipients[0].outcome) == "sent"
    await bus.wait_idle()
    assert len(smtp_sink.messages) == 1
    log_text = role.log()
    assert f"{queued.queue_id}: to=<a@dest.test>, relay=127.0.0.1[127.0.0.1]:" in log_text
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued)" in log_text


@sqlite_only
async def test_survives_a_nats_restart(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink,
    nats_server: NatsServer,
) -> None:
    await start_agent()
    first = await queue_message(engine, ["a@dest.test"])
    await bus.publish_job(make_job(first, smtp_sink.nexthop))
    await bus.results(1)

    await asyncio.to_thread(nats_server.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(nats_server.start)  # same port, same store

    second = await queue_message(engine, ["b@dest.test"])

    async def published() -> bool:
        try:
            await bus.publish_job(make_job(second, smtp_sink.nexthop))
        except Exception:
            return False  # the test's own client is reconnecting too
        return True

    await eventually(published, 15, "a job published after the restart")
    results = await bus.results(2, timeout=20)
    assert results[1].queue_id == second.queue_id
    assert Outcome.from_proto(results[1].recipients[0].outcome) == "sent"
