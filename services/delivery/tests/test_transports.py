"""One delivery process serving the whole routing table: jobs for every
transport on the bus, results back, mail where each transport puts it —
smtp by MX (dnsmasq), lmtp to Dovecot, local and virtual maildirs, error,
discard — and the job slots shared fairly among the transports."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.status import Outcome
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.sink import SmtpSink
from postfleet.delivery.jobs import Slots
from postfleet.delivery.settings import DeliverySettings

from .conftest import Bus, StartAgent, make_job, queue_message
from .dovecot import Dovecot

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_default_transports_cover_the_routing_table() -> None:
    assert DeliverySettings().transports == [
        "smtp", "relay", "lmtp", "local", "virtual", "error", "discard"]


@sqlite_only
async def test_every_transport_from_one_process(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink,
    dovecot: Dovecot, make_dns: Callable[..., DnsServer], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dns = make_dns({"mx": {"dest.test": [(10, "mx.dest.test")]},
                    "hosts": {"mx.dest.test": "127.0.0.1"}})
    (tmp_path / "mail" / "bob").mkdir(parents=True)
    agent = await start_agent(
        dns_nameservers=[dns.nameserver], local_mail_root=str(tmp_path / "mail"),
        virtual_mailbox_base=str(tmp_path / "vmail"), default_process_limit=2,
    )
    assert [c.transport for c in agent.consumers] == [
        "smtp", "relay", "lmtp", "local", "virtual", "error", "discard"]
    routes = {
        "smtp": ("far@dest.test", f"dest.test:{smtp_sink.port}"),
        "relay": ("far2@dest.test", smtp_sink.nexthop),
        "lmtp": ("erin@lmtp.test", f"[127.0.0.1]:{dovecot.port}"),
        "local": ("bob@mx.postfleet.test", "mx.postfleet.test"),
        "virtual": ("info@fund.test", "fund.test"),
        "error": ("x@error.test", "5.1.2 no such domain here"),
        "discard": ("y@discard.test", "discard.test"),
    }
    jobs = {}
    with caplog.at_level(logging.INFO, logger="postfleet.maillog"):
        for transport, (rcpt, nexthop) in routes.items():
            queued = await queue_message(engine, [rcpt])
            job = make_job(queued, nexthop, transport=transport)
            jobs[job.job_id] = transport
            await bus.publish_job(job)
        results = await bus.results(len(routes))
        for transport in routes:
            await bus.wait_idle(transport)

    by_transport = {jobs[r.job_id]: r for r in results}
    outcome = {t: (Outcome.from_proto(r.recipients[0].outcome), r.recipients[0].dsn)
               for t, r in by_transport.items()}
    assert outcome == {
        "smtp": ("sent", "2.0.0"), "relay": ("sent", "2.0.0"), "lmtp": ("sent", "2.0.0"),
        "local": ("sent", "2.0.0"), "virtual": ("sent", "2.0.0"),
        "error": ("bounced", "5.1.2"), "discard": ("sent", "2.0.0"),
    }
    assert by_transport["smtp"].relay == f"mx.dest.test[127.0.0.1]:{smtp_sink.port}"
    assert by_transport["local"].relay == "local"
    assert by_transport["error"].recipients[0].reply == "no such domain here"
    assert sorted(m.recipients[0] for m in smtp_sink.messages) == [
        "far2@dest.test", "far@dest.test"]
    assert len(list((dovecot.maildir("lmtp.test", "erin") / "new").iterdir())) == 1
    assert len(list((tmp_path / "mail" / "bob" / "Maildir" / "new").iterdir())) == 1
    assert len(list((tmp_path / "vmail" / "fund.test" / "info" / "new").iterdir())) == 1
    # Postfix's mail log line, under each agent's own program name.
    lines = [r.getMessage() for r in caplog.records]
    for program, tail in [
        ("local", "relay=local, delay="), ("virtual", "relay=virtual, delay="),
        ("lmtp", f"relay=127.0.0.1[127.0.0.1]:{dovecot.port}, delay="),
        ("error", "dsn=5.1.2, status=bounced (no such domain here)"),
        ("discard", "dsn=2.0.0, status=sent (discard.test)"),
    ]:
        assert any(line.startswith(f"postfix/{program}[") and tail in line
                   for line in lines), (program, lines)


async def test_slots_are_first_come_first_served() -> None:
    slots = Slots(2)
    assert await slots.reserve(5) == 2
    order: list[str] = []

    async def waiter(name: str, want: int) -> None:
        got = await slots.reserve(want)
        order.append(f"{name}:{got}")

    first = asyncio.create_task(waiter("first", 1))
    await asyncio.sleep(0)
    second = asyncio.create_task(waiter("second", 4))
    await asyncio.sleep(0)
    slots.release(1)
    await asyncio.sleep(0)
    # A newcomer may not jump the queue while others wait.
    late = asyncio.create_task(waiter("late", 1))
    slots.release(1)
    await asyncio.wait_for(asyncio.gather(first, second), 1)
    assert order == ["first:1", "second:1"]
    assert not late.done()
    slots.release(2)
    await asyncio.wait_for(late, 1)
    assert order[-1] == "late:1"
    assert slots.used == 1


async def test_cancelled_waiter_gives_its_slot_back() -> None:
    slots = Slots(1)
    await slots.reserve(1)
    waiter = asyncio.create_task(slots.reserve(1))
    await asyncio.sleep(0)
    waiter.cancel()
    slots.release(1)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.used == 0
