"""Fixtures for the delivery role's tests: a queue store with messages in it,
a NATS with the streams, the role running in-process, and a results reader;
for the TLS, SASL and MTA-STS tests, certificates from the test's own CA,
SMTP servers with STARTTLS and AUTH, a dnsmasq naming them, the mail log."""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import connect, ensure_consumer, ensure_streams
from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message, Recipient
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.queueid import new_queue_id
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.pki import TestCa
from postfleet.core.testing.sink import SmtpSink
from postfleet.delivery.agent import DeliveryAgent
from postfleet.delivery.outcome import Delivery
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.smtp import SmtpTransport
from postfleet.delivery.store import StoredMessage

from .dovecot import Dovecot

# A loopback port nothing answers on (discard): DNS queries there fail at once.
NO_DNS = "127.0.0.1:9"

BODY = (
    b"From: alice@origin.test\r\n"
    b"To: bob@dest.test\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two leading dots\r\n"
    b".\r\n"
    b"middle . dot\r\n"
    b"last line\r\n"
)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A real Dovecot LMTP server, shared by the session's tests (each test
    uses its own recipients)."""
    server = Dovecot().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()


@dataclass
class Queued:
    queue_id: str
    sender: str
    recipients: list[tuple[int, str]]


async def queue_message(
    engine: AsyncEngine, rcpts: list[str], sender: str = "alice@origin.test",
    body: bytes = BODY,
) -> Queued:
    now = datetime.now(UTC)
    qid = new_queue_id()
    async with engine.begin() as conn:
        await conn.execute(insert(Message).values(
            queue_id=qid, sender=sender, size=len(body), body=body, trace_id="trace-1",
            state="active", arrived_at=now, expires_at=now + timedelta(days=5)))
        ids = []
        for rcpt in rcpts:
            # Claimed once, as qmgr does before dispatching attempt 1.
            res = await conn.execute(insert(Recipient).values(
                queue_id=qid, address=rcpt, orig_rcpt=rcpt, status="pending",
                transport="smtp", next_attempt_at=now, attempts=1,
                lease_owner="q1").returning(Recipient.id))
            ids.append(int(res.scalar_one()))
    return Queued(qid, sender, list(zip(ids, rcpts, strict=True)))


_job_numbers = itertools.count(1)


def make_job(queued: Queued, nexthop: str, transport: str = "smtp",
             attempt: int = 1) -> delivery_pb2.Job:
    job = delivery_pb2.Job(
        job_id=f"{queued.queue_id}/{queued.recipients[0][0]}/{attempt}/{next(_job_numbers)}",
        queue_id=queued.queue_id, sender=queued.sender, transport=transport,
        nexthop=nexthop, attempt=attempt, trace_id="trace-1",
        queued_at=datetime.now(UTC).timestamp(),
    )
    for rid, addr in queued.recipients:
        job.recipients.add(id=rid, address=addr, orcpt="")
    return job


@dataclass
class Bus:
    nc: Client
    js: JetStreamContext
    results_sub: JetStreamContext.PullSubscription
    seen: list[delivery_pb2.Result] = field(default_factory=list)

    async def publish_job(self, job: delivery_pb2.Job) -> None:
        await self.js.publish(
            subjects.delivery_subject(job.transport), job.SerializeToString(),
            headers={"Nats-Msg-Id": job.job_id},
        )

    async def results(self, count: int, timeout: float = 15.0) -> list[delivery_pb2.Result]:
        """Read (and ack) results until ``count`` have arrived in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.seen) < count:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{len(self.seen)} of {count} results")
            try:
                msgs = await self.results_sub.fetch(
                    batch=count - len(self.seen), timeout=min(left, 2.0)
                )
            except TimeoutError:
                continue
            for msg in msgs:
                self.seen.append(delivery_pb2.Result.FromString(msg.data))
                await msg.ack()
        return self.seen

    async def consumer_info(self, transport: str = "smtp") -> Any:
        return await self.js.consumer_info(
            subjects.DELIVERY_STREAM, subjects.delivery_consumer(transport)
        )

    async def wait_idle(self, transport: str = "smtp", timeout: float = 15.0) -> None:
        """Until every job published has been acknowledged."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await self.consumer_info(transport)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"consumer not idle: {info}")
            await asyncio.sleep(0.05)


async def open_bus(url: str) -> Bus:
    nc = await connect(url, "delivery-tests")
    js = nc.jetstream()
    await ensure_streams(js)
    await ensure_consumer(js, subjects.RESULTS_STREAM, "test-results",
                          subjects.RESULTS_SUBJECT, 30.0)
    sub = await js.pull_subscribe_bind(consumer="test-results", stream=subjects.RESULTS_STREAM)
    return Bus(nc, js, sub)


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[Bus]:
    b = await open_bus(nats_server.url)
    yield b
    await b.nc.close()


async def send(
    settings: DeliverySettings, nexthop: str, rcpts: tuple[str, ...] = ("bob@dest.test",),
    routing: RoutingSnapshot | None = None,
) -> Delivery:
    """One job straight to a new smtp transport (no bus, no queue store);
    ``routing``: the snapshot in force (smtp_tls_policy_maps)."""
    pool = SessionPool(cache_time_limit=0, reuse_time_limit=0)
    transport = SmtpTransport(settings, pool, routing=(lambda: routing) if routing else None)
    job = delivery_pb2.Job(queue_id="4F2A1", transport="smtp", nexthop=nexthop)
    for number, rcpt in enumerate(rcpts, 1):
        job.recipients.add(id=number, address=rcpt)
    try:
        return await transport.deliver(job, StoredMessage("4F2A1", "alice@origin.test", BODY))
    finally:
        await pool.close()
        await transport.close()


def delivery_settings(database_url: str, nats_url: str, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = dict(
        database_url=database_url, nats_url=nats_url, myhostname="mx.postfleet.test",
        delivery_fetch_timeout=0.5, delivery_drain_timeout=5.0,
        smtp_connect_timeout=5.0, smtp_helo_timeout=10.0,
        # Never the machine's own resolver: a test that wants DNS brings a
        # dnsmasq (make_dns); any other lookup goes nowhere and fails fast.
        dns_nameservers=[NO_DNS], dns_timeout=1.0,
    )
    values.update(overrides)
    return DeliverySettings(**values)


StartAgent = Callable[..., Awaitable[DeliveryAgent]]


@pytest.fixture
async def start_agent(
    database_url: str, nats_server: NatsServer
) -> AsyncIterator[StartAgent]:
    """Run the delivery role in-process: ``agent = await start_agent(**settings)``."""
    started: list[tuple[DeliveryAgent, Client, AsyncEngine]] = []

    async def start(
        routing: Callable[[], RoutingSnapshot] | None = None, **overrides: Any
    ) -> DeliveryAgent:
        settings = delivery_settings(database_url, nats_server.url, **overrides)
        nc = await connect(settings.nats_url, "delivery")
        engine = create_engine(settings.database_url, writer=False)
        agent = DeliveryAgent(settings, nc.jetstream(), engine, routing=routing)
        await agent.start()
        started.append((agent, nc, engine))
        return agent

    yield start
    for agent, nc, engine in started:
        await agent.drain(2.0)
        await nc.close()
        await engine.dispose()


# -- TLS, SASL and MTA-STS peers ---------------------------------------------------------

TLS_ZONE: dict[str, Any] = {
    "mx": {"tls.test": [(10, "mx.tls.test")]},
    "hosts": {"mx.tls.test": "127.0.0.1"},
}
MAILLOG = "postfleet.maillog"


@pytest.fixture(scope="session")
def certs(test_ca: TestCa) -> dict[str, tuple[Path, Path]]:
    """Server certificates: "good" names mx.tls.test, "wrong" another host."""
    return {
        "good": test_ca.issue("mx", dns=["mx.tls.test"]),
        "wrong": test_ca.issue("other", dns=["other.test"]),
    }


@pytest.fixture
def tls_dns(make_dns: Callable[..., DnsServer]) -> DnsServer:
    return make_dns(TLS_ZONE)


@pytest.fixture
def serve() -> Iterator[Callable[..., SmtpSink]]:
    """Start sinks: ``serve(cert)`` offers STARTTLS with that certificate,
    ``serve(users={...})`` requires AUTH."""
    started: list[SmtpSink] = []

    def start(cert: tuple[Path, Path] | None = None, maximum: ssl.TLSVersion | None = None,
              **kwargs: Any) -> SmtpSink:
        context = TestCa.server_context(*cert, maximum=maximum) if cert else None
        sink = SmtpSink(tls_context=context, **kwargs).start()
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


def tls_settings(dns: DnsServer, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = dict(
        myhostname="client.postfleet.test", smtp_connect_timeout=5.0, smtp_helo_timeout=5.0,
        smtp_starttls_timeout=5.0, dns_nameservers=[dns.nameserver], dns_timeout=2.0)
    values.update(overrides)
    return DeliverySettings(**values)


def only(delivery: Delivery) -> tuple[str, str, str]:
    """(status, dsn, reply) of a one-recipient delivery."""
    (result,) = delivery.outcomes
    return result.status, result.dsn, result.reply


@pytest.fixture
def maillog(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The mail log lines so far."""
    caplog.set_level(logging.INFO, logger=MAILLOG)
    return lambda: [r.getMessage() for r in caplog.records if r.name == MAILLOG]
