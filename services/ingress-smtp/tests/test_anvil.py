"""anvil held fleet-wide in NATS KV: connection counts and rates shared by
ingress replicas (two Listeners in one test, two real ingress processes in
the brute-force test), Postfix's replies, the exceptions list, and counts
that follow disconnects and replicas that die."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter

import nats
import pytest

from postfleet.core.bus.connect import ensure_bus
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.sasl_users import UserTable
from postfleet.core.sockets import free_port
from postfleet.core.testing.cluster import RoleProcess
from postfleet.core.testing.ports import wait_port
from postfleet.core.testing.waiting import eventually
from postfleet.ingress_smtp.anvil import FleetAnvil

# 127.0.0.1, the tests' client, is outside mynetworks and so not exempt.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"])
TOO_MANY = "421 4.7.0 mx.postfleet.test Error: too many connections from 127.0.0.1"


@pytest.fixture
async def anvils(nats_server):
    """make() -> a FleetAnvil on the test's NATS: one per 'replica'."""
    made: list[FleetAnvil] = []
    connections = []

    async def make(time_unit: float = 3600.0, heartbeat: float = 30.0) -> FleetAnvil:
        nc = await nats.connect(nats_server.url)
        connections.append(nc)
        anvil = await FleetAnvil(await ensure_bus(nc), time_unit, heartbeat=heartbeat).start()
        made.append(anvil)
        return anvil

    yield make
    for anvil in made:
        await anvil.stop()
    for nc in connections:
        await nc.close()


async def test_connection_count_is_shared_by_two_replicas(make_ingress, dialogs, anvils):
    limits = {"smtpd_client_connection_count_limit": 2, "snapshot": OUTSIDE}
    a = await make_ingress(anvil=await anvils(), **limits)
    b = await make_ingress(anvil=await anvils(), **limits)
    first = await dialogs(a.port())
    await dialogs(b.port())
    reader, writer = await asyncio.open_connection("127.0.0.1", a.port())
    assert (await reader.readline()).decode().rstrip() == TOO_MANY
    assert await reader.read() == b""
    writer.close()
    # One leaves: the next one is let in (the count follows disconnects).
    await first.cmd("QUIT")

    async def admitted() -> bool:
        r, w = await asyncio.open_connection("127.0.0.1", b.port())
        line = (await r.readline()).decode()
        w.close()
        return line.startswith("220 ")

    await eventually(admitted)


async def test_mynetworks_clients_are_not_counted(make_ingress, dialogs, anvils):
    # The default exceptions are $mynetworks, and 127.0.0.1 is in the default one.
    ingress = await make_ingress(anvil=await anvils(), smtpd_client_connection_count_limit=1,
                                 smtpd_client_message_rate_limit=1)
    one, two = await dialogs(ingress.port()), await dialogs(ingress.port())
    assert one.greeting[0] == two.greeting[0] == 220
    for d in (one, one):
        await d.cmd("EHLO client.test")
        assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
        await d.cmd("RSET")


async def test_message_and_recipient_rates(make_ingress, dialogs, anvils):
    limits = {"snapshot": OUTSIDE.model_copy(update={"relay_domains": ["x.example"]}),
              "smtpd_client_message_rate_limit": 2, "smtpd_client_recipient_rate_limit": 3}
    a = await make_ingress(anvil=await anvils(), **limits)
    b = await make_ingress(anvil=await anvils(), **limits)
    da, db = await dialogs(a.port()), await dialogs(b.port())
    for d in (da, db):
        await d.cmd("EHLO client.test")
    assert await da.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    assert [await da.line(f"RCPT TO:<r{i}@x.example>") for i in range(2)] == ["250 2.1.5 Ok"] * 2
    await da.cmd("RSET")
    assert await db.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    assert await db.line("RCPT TO:<r3@x.example>") == "250 2.1.5 Ok"
    assert await db.line("RCPT TO:<r4@x.example>") == (
        "450 4.7.1 Error: too many recipients from 127.0.0.1")
    await db.cmd("RSET")
    assert await da.line("MAIL FROM:<a@b.example>") == (
        "450 4.7.1 Error: too much mail from 127.0.0.1")


async def test_a_dead_replicas_connections_stop_counting(make_ingress, anvils):
    # heartbeat 0.2 s: an entry not rewritten for 0.6 s is a dead replica's.
    dead = await anvils(heartbeat=0.2)
    await dead.connect("smtp", "192.0.2.9")
    dead._task.cancel()  # it "dies": no heartbeat, no goodbye
    live = await anvils(heartbeat=0.2)
    first = await live.connect("smtp", "192.0.2.9")
    assert first is not None and first[0] == 2

    async def alone() -> bool:
        counted = await live.event("conn", "smtp", "192.0.2.10")  # touch the bus
        total = await live._set_mine("smtp", "192.0.2.9", 1)
        return counted is not None and total == 1

    await eventually(alone)


# -- brute force across two ingress processes ------------------------------------------
def _ingress_process(tmp_path, name: str, nats_url: str, users: str) -> RoleProcess:
    port, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
    env.update(
        POSTFLEET_NATS_URL=nats_url, POSTFLEET_MYHOSTNAME="mx.postfleet.test",
        POSTFLEET_HTTP_PORT=str(http), POSTFLEET_LOG_FORMAT="text",
        POSTFLEET_CLEANUP_ADDRESS=f"127.0.0.1:{free_port()}",
        POSTFLEET_LISTENERS=json.dumps([{"name": "smtp", "address": "127.0.0.1",
                                         "port": port}]),
        POSTFLEET_SMTPD_PEERNAME_LOOKUP="no", POSTFLEET_DNS_NAMESERVERS="127.0.0.1:1",
        POSTFLEET_SMTPD_SASL_AUTH_ENABLE="yes", POSTFLEET_SMTPD_SASL_PATH=users,
        POSTFLEET_SMTPD_CLIENT_AUTH_RATE_LIMIT="10",
        POSTFLEET_SMTPD_CLIENT_EVENT_LIMIT_EXCEPTIONS="",
        POSTFLEET_SMTPD_SOFT_ERROR_LIMIT="100", POSTFLEET_SMTPD_HARD_ERROR_LIMIT="100",
        # The window is longer than the test: the count cannot start over midway.
        POSTFLEET_ANVIL_RATE_TIME_UNIT="1h",
    )
    proc = RoleProcess("ingress-smtp", env, tmp_path / f"{name}.log", http).start()
    proc.smtp_port = port  # type: ignore[attr-defined]
    wait_port(port)
    return proc


async def _auth(port: int, password: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reader.readline()
        token = base64.b64encode(f"\0mallory\0{password}".encode()).decode()
        writer.write(f"EHLO attacker.test\r\nAUTH PLAIN {token}\r\nQUIT\r\n".encode())
        while (line := (await reader.readline()).decode()).startswith("250"):
            pass
        return line.rstrip()
    finally:
        writer.close()


async def test_brute_force_across_two_ingress_processes(tmp_path, nats_server):
    users = tmp_path / "users"
    UserTable(users).add("mallory", "the real one")
    procs = [await asyncio.to_thread(_ingress_process, tmp_path, f"ingress{i}",
                                     nats_server.url, str(users)) for i in range(2)]
    try:
        replies = Counter()
        for attempt in range(50):  # alternately at each replica, one client address
            reply = await _auth(procs[attempt % 2].smtp_port, f"guess{attempt}")
            replies[reply] += 1
        assert replies == {
            "535 5.7.8 Error: authentication failed: authentication failure": 10,
            "450 4.7.1 Error: too many AUTH commands from 127.0.0.1": 40,
        }, replies
        # Cut off means cut off: the right password is refused too, on both.
        for proc in procs:
            assert await _auth(proc.smtp_port, "the real one") == (
                "450 4.7.1 Error: too many AUTH commands from 127.0.0.1")
        assert ("warning: AUTH command rate limit exceeded: 52 from unknown[127.0.0.1] "
                "for service smtp") in procs[0].log() + procs[1].log()
    finally:
        for proc in procs:
            proc.stop()
