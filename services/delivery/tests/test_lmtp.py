"""The lmtp transport against a real Dovecot LMTP server (over TCP and a UNIX
socket; the mail must land in Dovecot's maildirs) and against a scripted
server for the per-recipient replies after DATA."""

from __future__ import annotations

import asyncio
import os
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.nexthop import Nexthop, NexthopError
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.scripted import scripted_server
from postfleet.delivery.hostlookup import HostResolver
from postfleet.delivery.lmtp import LmtpNexthop, LmtpTransport, parse_lmtp_nexthop
from postfleet.delivery.outcome import Delivery
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage

from .conftest import BODY, NO_DNS
from .dovecot import Dovecot


def lmtp(**overrides: Any) -> LmtpTransport:
    values: dict[str, Any] = dict(myhostname="mx.postfleet.test", dns_nameservers=[NO_DNS],
                                  lmtp_connect_timeout=5.0, lmtp_lhlo_timeout=5.0)
    values.update(overrides)
    return LmtpTransport(DeliverySettings(**values), HostResolver())


async def deliver(nexthop: str, rcpts: list[str], body: bytes = BODY,
                  sender: str = "alice@origin.test", **settings: Any) -> Delivery:
    job = delivery_pb2.Job(queue_id="4F2A1", transport="lmtp", nexthop=nexthop)
    for number, rcpt in enumerate(rcpts, 1):
        job.recipients.add(id=number, address=rcpt)
    return await lmtp(**settings).deliver(job, StoredMessage("4F2A1", sender, body))


def arrived(maildir: Path) -> list[bytes]:
    new = maildir / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


async def test_dovecot_over_tcp_stores_each_recipient(dovecot: Dovecot) -> None:
    delivery = await deliver(f"[127.0.0.1]:{dovecot.port}", ["bob@ex.test", "Al@ex.test"])
    assert delivery.relay == f"127.0.0.1[127.0.0.1]:{dovecot.port}"
    for result, rcpt in zip(delivery.outcomes, ["bob@ex.test", "Al@ex.test"], strict=True):
        assert (result.status, result.dsn) == ("sent", "2.0.0"), result
        assert result.reply.startswith(f"250 2.0.0 <{rcpt}> ")
        assert result.reply.endswith(" Saved")
    for user in ("bob", "al"):
        (stored,) = arrived(dovecot.maildir("ex.test", user))
        msg = message_from_bytes(stored)
        assert msg["Subject"] == "dots"
        text = stored.replace(b"\r\n", b"\n")
        # Dot-stuffed on the wire exactly once, unstuffed by Dovecot.
        assert b"\n.leading dot\n..two leading dots\n.\nmiddle . dot\n" in text


async def test_dovecot_over_a_unix_socket(dovecot: Dovecot) -> None:
    path = dovecot.socket_path
    delivery = await deliver(f"unix:{path}", ["carol@ex.test"])
    assert delivery.relay == f"mx.postfleet.test[{path}]"
    assert delivery.outcomes[0].status == "sent", delivery
    assert len(arrived(dovecot.maildir("ex.test", "carol"))) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a mailbox Dovecot's user cannot write")
async def test_dovecot_defers_only_the_recipient_it_cannot_store(dovecot: Dovecot) -> None:
    domain = dovecot.dir / "mail" / "ex.test"
    domain.mkdir(exist_ok=True)
    os.chown(domain, dovecot.uid, dovecot.gid)
    locked = domain / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o700)  # root's: Dovecot's nobody cannot make the maildir
    delivery = await deliver(f"[127.0.0.1]:{dovecot.port}", ["dave@ex.test", "locked@ex.test"])
    ok, failed = delivery.outcomes
    assert ok.status == "sent"
    assert failed.status == "deferred", failed
    assert failed.reply.startswith("host 127.0.0.1[127.0.0.1] said: 4")
    assert failed.reply.endswith("(in reply to end of DATA command)")
    assert len(arrived(dovecot.maildir("ex.test", "dave"))) == 1


async def test_one_reply_per_accepted_recipient_in_order() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 lmtp.test LMTP ready\r\n")
        rcpts: list[bytes] = []
        while line := await reader.readline():
            seen.append(line.rstrip())
            verb = line[:4].upper()
            if verb == b"LHLO":
                writer.write(b"250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"RCPT":
                if b"nobody" in line:
                    writer.write(b"550 5.1.1 <nobody@ex.test> User doesn't exist\r\n")
                else:
                    rcpts.append(line)
                    writer.write(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                while (await reader.readline()) != b".\r\n":
                    pass
                for rcpt in rcpts:
                    if b"full" in rcpt:
                        writer.write(b"452 4.2.2 <full@ex.test> Quota exceeded\r\n")
                    else:
                        writer.write(b"250 2.0.0 <" + rcpt[9:-3] + b"> Saved\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"250 2.1.0 OK\r\n")
            await writer.drain()

    async with scripted_server(script) as server:
        delivery = await deliver(f"inet:127.0.0.1:{server.port}",
                                 ["a@ex.test", "nobody@ex.test", "full@ex.test", "b@ex.test"])
    a, nobody, full, b = delivery.outcomes
    assert (a.status, a.reply) == ("sent", "250 2.0.0 <a@ex.test> Saved")
    assert (nobody.status, nobody.dsn) == ("bounced", "5.1.1")
    assert nobody.reply == ("host 127.0.0.1[127.0.0.1] said: 550 5.1.1 <nobody@ex.test> "
                            "User doesn't exist (in reply to RCPT TO command)")
    assert (full.status, full.dsn) == ("deferred", "4.2.2")
    assert full.reply == ("host 127.0.0.1[127.0.0.1] said: 452 4.2.2 <full@ex.test> "
                          "Quota exceeded (in reply to end of DATA command)")
    assert (b.status, b.reply) == ("sent", "250 2.0.0 <b@ex.test> Saved")
    assert seen[0] == b"LHLO mx.postfleet.test"
    assert seen[-1] == b"QUIT"


async def test_lost_connection_after_data_defers_the_rest() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        while line := await reader.readline():
            if line.startswith(b"DATA"):
                writer.write(b"354 go\r\n")
                await writer.drain()
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(b"250 2.0.0 <a@ex.test> Saved\r\n")  # then hangs up
                await writer.drain()
                return
            writer.write(b"250 OK\r\n")
            await writer.drain()

    async with scripted_server(script) as server:
        delivery = await deliver(f"[127.0.0.1]:{server.port}", ["a@ex.test", "b@ex.test"])
    a, b = delivery.outcomes
    assert a.status == "sent"
    assert (b.status, b.dsn) == ("deferred", "4.4.2")
    assert b.reply == ("lost connection with 127.0.0.1[127.0.0.1] while sending end of data "
                       "-- message may be sent more than once")


async def test_refused_connection_and_greeting() -> None:
    port = free_port()
    (result,) = (await deliver(f"[127.0.0.1]:{port}", ["a@ex.test"])).outcomes
    assert (result.status, result.dsn) == ("deferred", "4.4.1")
    assert result.reply == f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"554 5.3.2 not now\r\n")
        await writer.drain()

    async with scripted_server(refuse) as server:
        (result,) = (await deliver(f"127.0.0.1:{server.port}", ["a@ex.test"])).outcomes
    assert result.status == "deferred"
    assert result.reply == "host 127.0.0.1[127.0.0.1] refused to talk to me: 554 5.3.2 not now"

    (result,) = (await deliver("unix:/nonexistent/lmtp", ["a@ex.test"])).outcomes
    assert result.reply == "connect to /nonexistent/lmtp: No such file or directory"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/dovecot/lmtp", LmtpNexthop(path="/run/dovecot/lmtp")),
        ("unix:private/dovecot-lmtp", LmtpNexthop(path="private/dovecot-lmtp")),
        ("inet:mail.ex.test:2424", LmtpNexthop(tcp=Nexthop("mail.ex.test", 2424, True))),
        ("inet:[10.0.0.7]", LmtpNexthop(tcp=Nexthop("10.0.0.7", 24, True))),
        ("mail.ex.test", LmtpNexthop(tcp=Nexthop("mail.ex.test", 24, True))),
        ("[mail.ex.test]:25", LmtpNexthop(tcp=Nexthop("mail.ex.test", 25, True))),
    ],
)
def test_lmtp_nexthops_never_use_mx(text: str, expected: LmtpNexthop) -> None:
    assert parse_lmtp_nexthop(text, 24) == expected


def test_bad_lmtp_nexthop() -> None:
    with pytest.raises(NexthopError):
        parse_lmtp_nexthop("unix:", 24)
