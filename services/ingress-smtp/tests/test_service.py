"""The whole role as main wires it: routing from NATS KV (changing live),
health endpoints, and the SIGTERM drain."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from postfleet.core.bus.connect import connect, ensure_bus
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import publish_snapshot
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.waiting import eventually
from postfleet.ingress_smtp.main import run
from postfleet.ingress_smtp.settings import IngressSettings, Listener


@dataclass
class Role:
    task: asyncio.Task[None]
    smtp_port: int
    http_port: int

    async def readyz(self) -> int:
        def get() -> int:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/readyz", timeout=2
                ) as resp:
                    return int(resp.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)

        return await asyncio.to_thread(get)

    async def sigterm(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # Service installed the loop's handler


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


@pytest.fixture
async def start_role(nats_server, cleanup) -> AsyncIterator:
    """start_role(**settings): run() as main does, until SIGTERM (sent at teardown)."""
    started: list[Role] = []

    async def start(**values) -> Role:
        smtp_port, http_port = free_port(), free_port()
        settings = IngressSettings(
            myhostname="mx.postfleet.test", nats_url=nats_server.url,
            cleanup_address=cleanup.address, http_port=http_port,
            listeners=[Listener(name="smtp", address="127.0.0.1", port=smtp_port)],
            smtpd_peername_lookup=False, log_format="text", **values,
        )
        task = asyncio.create_task(run(settings))
        role = Role(task, smtp_port, http_port)
        started.append(role)

        async def listening() -> bool:
            assert not task.done(), task.exception()
            return not await _refused(smtp_port)

        await eventually(listening, timeout=10, what="the SMTP listener")
        await eventually(lambda: _is(role.readyz(), 200), timeout=10, what="/readyz 200")
        return role

    yield start
    for role in started:
        if not role.task.done():
            await role.sigterm()
        await asyncio.wait_for(role.task, 15)


@pytest.fixture
async def role(start_role) -> Role:
    return await start_role(drain_timeout="10s")


async def _is(value, expected) -> bool:
    return await value == expected


async def test_routing_published_to_kv_is_honoured_live(role, nats_server, dialogs) -> None:
    nc = await connect(nats_server.url, "test")
    try:
        js = await ensure_bus(nc)
        d = await dialogs(role.smtp_port)
        await d.cmd("EHLO client.test")

        async def rcpt_reply() -> str:
            await d.cmd("RSET")
            await d.cmd("MAIL FROM:<a@b.example>")
            return await d.line("RCPT TO:<x@far.example>")

        # Nothing published: Postfix defaults, and loopback is in mynetworks.
        assert await rcpt_reply() == "250 2.1.5 Ok"
        await publish_snapshot(js, RoutingSnapshot(mynetworks=["10.0.0.0/8"]))
        denied = "554 5.7.1 <x@far.example>: Relay access denied"
        await eventually(lambda: _is(rcpt_reply(), denied), timeout=10)
        await publish_snapshot(
            js, RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["far.example"]))
        await eventually(lambda: _is(rcpt_reply(), "250 2.1.5 Ok"), timeout=10)
    finally:
        await nc.close()


async def test_sigterm_drains_in_flight_sessions(role, cleanup, dialogs) -> None:
    cleanup.servicer.mode = "gate"
    idle = await dialogs(role.smtp_port)
    await idle.cmd("EHLO idle.test")
    busy = await dialogs(role.smtp_port)
    await busy.cmd("EHLO busy.test")
    await busy.cmd("MAIL FROM:<a@b.example>")
    await busy.cmd("RCPT TO:<c@d.example>")
    await busy.cmd("DATA")
    await busy.send(b"Subject: in flight\r\n\r\nhi\r\n.\r\n")
    await asyncio.wait_for(cleanup.servicer.entered.wait(), 10)

    await role.sigterm()
    # Idle sessions are told at once; no new connections; not ready any more.
    assert await idle.reply() == (
        421, ["4.3.2 mx.postfleet.test Service shutting down, closing transmission channel"])
    await eventually(lambda: _refused(role.smtp_port), timeout=10, what="listener closed")
    assert await role.readyz() == 503
    assert not role.task.done()
    # The message in flight is finished and acknowledged, then the session closes.
    cleanup.servicer.release.set()
    assert await busy.reply() == (250, ["2.0.0 Ok: queued as 4Q0001"])
    assert (await busy.reply())[0] == 421
    await asyncio.wait_for(role.task, 10)
    assert len(cleanup.servicer.submitted) == 1


async def test_drain_deadline_closes_stuck_sessions(start_role, cleanup, dialogs) -> None:
    role = await start_role(drain_timeout="1s")
    stuck = await dialogs(role.smtp_port)
    await stuck.cmd("EHLO slow.test")
    await stuck.cmd("MAIL FROM:<a@b.example>")  # inside a transaction, then silent
    await role.sigterm()
    # The transaction may go on until drain_timeout (1s); nothing is said before...
    with pytest.raises(TimeoutError):
        await stuck.reply(timeout=0.9)
    # ...and the 421 comes by the deadline, then the role ends.
    code, _ = await stuck.reply(timeout=4)
    assert code == 421
    await asyncio.wait_for(role.task, 10)
    assert cleanup.servicer.calls == 0


async def test_metrics_are_exported(role, dialogs, smtp_transaction) -> None:
    d = await dialogs(role.smtp_port)
    assert (await smtp_transaction(d, "a@b.example", ["c@d.example"], b"hi\r\n.\r\n")
            ).startswith("250")
    await d.line("BOGUS")

    def scrape() -> str:
        url = f"http://127.0.0.1:{role.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())

    text = await asyncio.to_thread(scrape)
    assert 'postfleet_smtpd_connections_total{listener="smtp"}' in text
    assert 'postfleet_smtpd_messages_accepted_total{listener="smtp"}' in text
    assert 'postfleet_smtpd_rejects_total{code="502",listener="smtp"}' in text
