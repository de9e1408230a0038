"""The local, virtual, error and discard transports, driven directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.error import DiscardTransport, ErrorTransport, split_reason
from postfleet.delivery.local import LocalTransport, VirtualTransport, split_address
from postfleet.delivery.outcome import Delivery
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage

from .conftest import BODY


def settings(tmp_path: Path, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = dict(
        myhostname="mx.postfleet.test", local_mail_root=str(tmp_path / "mail"),
        virtual_mailbox_base=str(tmp_path / "vmail"),
    )
    values.update(overrides)
    return DeliverySettings(**values)


def job_for(transport: str, rcpts: list[str], nexthop: str = "") -> delivery_pb2.Job:
    job = delivery_pb2.Job(queue_id="4F2A1", transport=transport, nexthop=nexthop)
    for number, rcpt in enumerate(rcpts, 1):
        job.recipients.add(id=number, address=rcpt)
    return job


async def run(transport: Any, rcpts: list[str], *, body: bytes = BODY,
              sender: str = "alice@origin.test", nexthop: str = "") -> Delivery:
    job = job_for(transport.program, rcpts, nexthop)
    result: Delivery = await transport.deliver(job, StoredMessage("4F2A1", sender, body))
    return result


def files(maildir: Path, sub: str = "new") -> list[Path]:
    folder = maildir / sub
    return sorted(folder.iterdir()) if folder.is_dir() else []


async def test_local_maildir_with_postfix_headers(tmp_path: Path) -> None:
    (tmp_path / "mail" / "bob").mkdir(parents=True)
    local = LocalTransport(settings(tmp_path, recipient_delimiter="+-"))
    delivery = await run(local, ["Bob+Lists@Dest.Test"])
    assert delivery.relay == "local"
    (result,) = delivery.outcomes
    assert (result.status, result.dsn, result.reply) == ("sent", "2.0.0", "delivered to maildir")

    maildir = tmp_path / "mail" / "bob" / "Maildir"
    (path,) = files(maildir)
    assert files(maildir, "tmp") == []
    assert (maildir / "cur").is_dir()
    assert path.name.endswith(".mx.postfleet.test")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    content = path.read_bytes()
    assert content == (b"Return-Path: <alice@origin.test>\n"
                       b"Delivered-To: bob+lists@dest.test\n"
                       + BODY.replace(b"\r\n", b"\n"))


async def test_null_sender_and_two_deliveries_get_two_files(tmp_path: Path) -> None:
    (tmp_path / "mail" / "bob").mkdir(parents=True)
    local = LocalTransport(settings(tmp_path))
    await run(local, ["bob@dest.test"], sender="")
    await run(local, ["bob@dest.test"], sender="")
    paths = files(tmp_path / "mail" / "bob" / "Maildir")
    assert len(paths) == 2
    assert all(p.read_bytes().startswith(b"Return-Path: <>\n") for p in paths)


async def test_unknown_local_user_bounces(tmp_path: Path) -> None:
    (tmp_path / "mail").mkdir()
    local = LocalTransport(settings(tmp_path, recipient_delimiter="+"))
    (result,) = (await run(local, ["Nobody+x@dest.test"])).outcomes
    assert (result.status, result.dsn) == ("bounced", "5.1.1")
    assert result.reply == 'unknown user: "nobody"'
    assert list((tmp_path / "mail").iterdir()) == []


@pytest.mark.parametrize("user", ["..", ".hidden", "a/b"])
async def test_unsafe_user_names_are_unknown(tmp_path: Path, user: str) -> None:
    local = LocalTransport(settings(tmp_path, local_user_policy="create"))
    (result,) = (await run(local, [f"{user}@dest.test"])).outcomes
    assert result.dsn == "5.1.1"


async def test_create_policy_and_allow_list(tmp_path: Path) -> None:
    anyone = LocalTransport(settings(tmp_path, local_user_policy="create"))
    (result,) = (await run(anyone, ["carol@dest.test"])).outcomes
    assert result.status == "sent"
    assert len(files(tmp_path / "mail" / "carol" / "Maildir")) == 1

    listed = LocalTransport(settings(tmp_path, local_recipients="dave, erin"))
    dave, carol = (await run(listed, ["dave@dest.test", "carol@dest.test"])).outcomes
    assert dave.status == "sent"
    assert (carol.status, carol.reply) == ("bounced", 'unknown user: "carol"')


async def test_mailbox_size_limit_bounces_5_2_2(tmp_path: Path) -> None:
    (tmp_path / "mail" / "bob").mkdir(parents=True)
    local = LocalTransport(settings(tmp_path, mailbox_size_limit=len(BODY)))
    (result,) = (await run(local, ["bob@dest.test"])).outcomes
    assert (result.status, result.dsn) == ("bounced", "5.2.2")
    assert result.reply == "maildir delivery failed: error writing message: File too large"
    maildir = tmp_path / "mail" / "bob" / "Maildir"
    assert files(maildir) == [] and files(maildir, "tmp") == []


async def test_delivered_to_loop_bounces(tmp_path: Path) -> None:
    (tmp_path / "mail" / "bob").mkdir(parents=True)
    local = LocalTransport(settings(tmp_path))
    looped = b"Delivered-To: BOB@dest.test\r\n" + BODY
    bob, = (await run(local, ["bob@dest.test"], body=looped)).outcomes
    assert (bob.status, bob.dsn) == ("bounced", "5.4.6")
    assert bob.reply == "mail forwarding loop for bob@dest.test"


async def test_unwritable_mailbox_defers(tmp_path: Path) -> None:
    # A file where the Maildir should be: no write succeeds, even as root.
    home = tmp_path / "mail" / "bob"
    home.mkdir(parents=True)
    (home / "Maildir").write_text("not a directory")
    local = LocalTransport(settings(tmp_path))
    (result,) = (await run(local, ["bob@dest.test"])).outcomes
    assert (result.status, result.dsn) == ("deferred", "4.2.0")


async def test_virtual_maildir_per_domain(tmp_path: Path) -> None:
    virtual = VirtualTransport(settings(tmp_path, recipient_delimiter="+"))
    delivery = await run(virtual, ["Info+x@Fund-Univ.ES"])
    assert delivery.relay == "virtual"
    assert delivery.outcomes[0].status == "sent"
    (path,) = files(tmp_path / "vmail" / "fund-univ.es" / "info")
    assert path.read_bytes().startswith(
        b"Return-Path: <alice@origin.test>\nDelivered-To: info+x@fund-univ.es\n")

    strict = VirtualTransport(settings(tmp_path, virtual_user_policy="existing"))
    (result,) = (await run(strict, ["ghost@fund-univ.es"])).outcomes
    assert (result.dsn, result.reply) == ("5.1.1", 'unknown user: "ghost@fund-univ.es"')


@pytest.mark.parametrize(
    ("address", "delimiter", "expected"),
    [
        ("Bob@Dest.Test", "", ("bob", "dest.test")),
        ("bob+ext@d", "+", ("bob", "d")),
        ("bob-ext+x@d", "+-", ("bob", "d")),
        ("+bob@d", "+", ("+bob", "d")),
        ('"john doe"@d', "", ("john doe", "d")),
        ("postmaster", "+", ("postmaster", "")),
    ],
)
def test_split_address(address: str, delimiter: str, expected: tuple[str, str]) -> None:
    assert split_address(address, delimiter) == expected


@pytest.mark.parametrize(
    ("nexthop", "status", "dsn", "reply"),
    [
        ("mail for *.example is not deliverable", "bounced", "5.0.0",
         "mail for *.example is not deliverable"),
        ("5.1.1 mailbox unavailable", "bounced", "5.1.1", "mailbox unavailable"),
        ("4.7.1 service temporarily unavailable", "deferred", "4.7.1",
         "service temporarily unavailable"),
        ("2.0.0 nice try", "bounced", "5.0.0", "nice try"),
        ("", "bounced", "5.0.0", "delivery failed"),
    ],
)
async def test_error_transport(nexthop: str, status: str, dsn: str, reply: str) -> None:
    delivery = await run(ErrorTransport(), ["a@x.test", "b@x.test"], nexthop=nexthop)
    assert delivery.relay == "none"
    assert [(o.status, o.dsn, o.reply) for o in delivery.outcomes] == [(status, dsn, reply)] * 2


async def test_discard_transport() -> None:
    delivery = await run(DiscardTransport(), ["a@x.test"], nexthop="spam trap")
    assert delivery.relay == "none"
    (result,) = delivery.outcomes
    assert (result.status, result.dsn, result.reply) == ("sent", "2.0.0", "spam trap")
    (result,) = (await run(DiscardTransport(), ["a@x.test"])).outcomes
    assert result.reply == "discarded"


def test_split_reason() -> None:
    assert split_reason("4.4.1 later") == ("4.4.1", "later")
    assert split_reason("5.1.1") == ("5.1.1", "")
    assert split_reason("5.1.1x no code") == (None, "5.1.1x no code")
