"""The conversation the smtp and lmtp clients share (transaction.py), driven
through both transports against one scripted server: what is never sent,
timeouts, the hello (HELO fallback for smtp only), refusals at each step and
the SIZE limit, each with Postfix's wording."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.testing.scripted import scripted_server
from postfleet.delivery.hostlookup import HostResolver
from postfleet.delivery.lmtp import LmtpTransport
from postfleet.delivery.outcome import Delivery
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.smtp import SmtpTransport
from postfleet.delivery.store import StoredMessage

from .conftest import BODY, NO_DNS

LABEL = "host 127.0.0.1[127.0.0.1]"
OK = b"250 2.0.0 Ok\r\n"
DEFAULTS = {b"DATA": b"354 go ahead\r\n", b"QUIT": b"221 2.0.0 Bye\r\n"}


@dataclass
class Peer:
    """A scripted SMTP or LMTP server: what it saw, and what it answers."""

    lmtp: bool
    hello: bytes = b"250-peer.test\r\n250 8BITMIME\r\n"
    replies: dict[bytes, bytes] = field(default_factory=dict)  # verb -> reply
    silent: set[bytes] = field(default_factory=set)  # verbs never answered
    seen: list[bytes] = field(default_factory=list)

    def verbs(self) -> list[bytes]:
        return [line[:4].upper() for line in self.seen]

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 peer.test ready\r\n")
        accepted = 0
        while line := await reader.readline():
            self.seen.append(line.rstrip(b"\r\n"))
            verb = line[:4].upper()
            if verb in self.silent:
                await asyncio.Event().wait()
            default = self.hello if verb in (b"EHLO", b"LHLO") else DEFAULTS.get(verb, OK)
            reply = self.replies.get(verb, default)
            if verb == b"RCPT" and reply.startswith(b"2"):
                accepted += 1
            if verb == b"DATA" and reply.startswith(b"354"):
                writer.write(reply)
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                reply = OK * (accepted if self.lmtp else 1)
            writer.write(reply)
            await writer.drain()
            if verb == b"QUIT":
                return


@dataclass
class Client:
    name: str  # "smtp" or "lmtp"
    peer: Peer
    port: int

    async def deliver(
        self, rcpts: list[str], sender: str = "alice@origin.test", **overrides: Any
    ) -> Delivery:
        values: dict[str, Any] = dict(myhostname="mx.postfleet.test", dns_nameservers=[NO_DNS])
        values.update({f"{self.name}_{k}": v for k, v in overrides.items()})
        settings = DeliverySettings(**values)
        job = delivery_pb2.Job(queue_id="4F2A1", transport=self.name,
                               nexthop=f"[127.0.0.1]:{self.port}")
        for number, rcpt in enumerate(rcpts, 1):
            job.recipients.add(id=number, address=rcpt)
        message = StoredMessage("4F2A1", sender, BODY)
        if self.name == "lmtp":
            return await LmtpTransport(settings, HostResolver()).deliver(job, message)
        pool = SessionPool(cache_time_limit=0, reuse_time_limit=0)
        try:
            return await SmtpTransport(settings, pool, HostResolver()).deliver(job, message)
        finally:
            await pool.close()


@pytest.fixture(params=["smtp", "lmtp"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    peer = Peer(lmtp=request.param == "lmtp")
    async with scripted_server(peer) as server:
        yield Client(request.param, peer, server.port)


def outcomes(delivery: Delivery) -> list[tuple[str, str, str]]:
    return [(o.status, o.dsn, o.reply) for o in delivery.outcomes]


async def test_each_accepted_recipient_is_sent(client: Client) -> None:
    delivery = await client.deliver(["a@ex.test", "b@ex.test"])
    assert outcomes(delivery) == [("sent", "2.0.0", "250 2.0.0 Ok")] * 2
    assert client.peer.verbs()[1:5] == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]


async def test_control_characters_are_never_sent(client: Client) -> None:
    bad_sender = await client.deliver(["a@ex.test"], sender="x\r\nRCPT TO:<y@ex.test>@a.test")
    assert outcomes(bad_sender) == [("bounced", "5.1.7", "bad sender address syntax")]
    assert b"MAIL" not in client.peer.verbs()

    delivery = await client.deliver(["cr\r\n@ex.test", "tab\there@ex.test", "ok@ex.test"])
    bad = ("bounced", "5.1.3", "bad recipient address syntax")
    assert outcomes(delivery) == [bad, bad, ("sent", "2.0.0", "250 2.0.0 Ok")]
    assert [s for s in client.peer.seen if s.startswith(b"RCPT")] == [b"RCPT TO:<ok@ex.test>"]


@pytest.mark.parametrize(
    ("verb", "command"),
    [(b"MAIL", "MAIL FROM"), (b"RCPT", "RCPT TO"), (b"DATA", "DATA")],
)
async def test_a_refusal_names_the_command(client: Client, verb: bytes, command: str) -> None:
    client.peer.replies[verb] = b"554 5.7.1 no thanks\r\n"
    delivery = await client.deliver(["a@ex.test", "b@ex.test"])
    refused = ("bounced", "5.7.1", f"{LABEL} said: 554 5.7.1 no thanks (in reply to {command} "
               "command)")
    assert outcomes(delivery) == [refused] * 2


async def test_a_timeout_names_what_was_under_way(client: Client) -> None:
    client.peer.silent.add(b"RCPT")
    delivery = await asyncio.wait_for(client.deliver(["a@ex.test"], rcpt_timeout=0.3), 10)
    assert outcomes(delivery) == [(
        "deferred", "4.4.2",
        "conversation with 127.0.0.1[127.0.0.1] timed out while sending RCPT TO")]


async def test_the_server_size_limit_stops_before_mail(client: Client) -> None:
    client.peer.hello = b"250-peer.test\r\n250 SIZE 10\r\n"
    (result,) = (await client.deliver(["a@ex.test"])).outcomes
    assert (result.status, result.dsn) == ("bounced", "5.3.4")
    assert result.reply == (f"message size {len(BODY)} exceeds size limit 10 of server "
                            "127.0.0.1[127.0.0.1]")
    assert b"MAIL" not in client.peer.verbs()


async def test_helo_after_a_refused_ehlo_for_smtp_only(client: Client) -> None:
    verb = b"LHLO" if client.name == "lmtp" else b"EHLO"
    client.peer.replies[verb] = b"502 5.5.1 not here\r\n"
    client.peer.replies[b"HELO"] = b"250 peer.test\r\n"
    delivery = await client.deliver(["a@ex.test"])
    if client.name == "smtp":
        assert outcomes(delivery) == [("sent", "2.0.0", "250 2.0.0 Ok")]
        assert b"HELO mx.postfleet.test" in client.peer.seen
    else:  # an LMTP server must know LHLO
        assert outcomes(delivery) == [(
            "bounced", "5.5.1", f"{LABEL} said: 502 5.5.1 not here (in reply to LHLO command)")]
        assert b"HELO" not in client.peer.verbs()
