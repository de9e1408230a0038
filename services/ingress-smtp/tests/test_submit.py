"""The hand-off to cleanup over real gRPC: exact bytes in chunks, and never a
250 unless cleanup answered with a queue id (DESIGN invariant 1)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from postfleet.core.testing.ports import free_port
from postfleet.ingress_smtp.submit import WHOLE_MESSAGE_LIMIT

QUEUE_ERROR = "451 4.3.0 Error: queue file write error"


def message(size: int) -> bytes:
    """A CRLF message with dot lines, 8-bit bytes and a lone CR, about ``size`` bytes."""
    head = b"From: a@b.example\r\nTo: c@d.example\r\nSubject: big\r\n\r\n"
    lines = [b".leading dot", b"..two dots", b"caf\xc3\xa9 \xff 8bit", b"bare\rcr", b""]
    body = bytearray(head)
    n = 0
    while len(body) < size:
        body += lines[n % len(lines)] + b" %06d " % n + b"y" * 60 + b"\r\n"
        n += 1
    return bytes(body)


async def send_hi(d, sender: str = "a@b.example") -> str:
    """A one-line message to c@d.example over dialog ``d``: the final reply."""
    return await d.transaction(sender, ["c@d.example"], b"hi\r\n.\r\n")


def stuffed(raw: bytes) -> bytes:
    """What a client sends for ``raw``: dot-stuffed, then <CR><LF>.<CR><LF>."""
    out = b"\r\n".join(b"." + line if line.startswith(b".") else line
                       for line in raw.split(b"\r\n"))
    return out + b".\r\n"


async def test_message_streams_exact_bytes_in_chunks(make_ingress, dialogs, cleanup,
                                                     smtp_transaction, caplog) -> None:
    caplog.set_level(logging.INFO, logger="postfleet.maillog")
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    raw = message(WHOLE_MESSAGE_LIMIT + 200_000)  # past one request's size: a stream
    reply = await smtp_transaction(d, "a@b.example", ["c@d.example", "e@far.example"],
                                   stuffed(raw))
    assert reply == "250 2.0.0 Ok: queued as 4Q0001"
    [got] = cleanup.servicer.submitted
    assert got.body == raw
    assert len(got.chunks) == -(-len(raw) // 65536)
    assert all(0 < len(c) <= 64 * 1024 for c in got.chunks)
    env = got.envelope
    assert env.sender == "a@b.example"
    assert [r.address for r in env.recipients] == ["c@d.example", "e@far.example"]
    assert env.client.address == "127.0.0.1"
    assert env.client.port == d.writer.get_extra_info("sockname")[1]
    assert env.client.helo == "client.test" and env.client.protocol == "ESMTP"
    assert env.client.name == "unknown"  # smtpd_peername_lookup off in these tests
    assert len(env.trace_id) == 32 and int(env.trace_id, 16) >= 0
    # client= is logged with the queue id smtpd asked cleanup for, before the hand-off
    [asked] = cleanup.servicer.requested
    assert any(r.getMessage() == f"postfix/smtpd[{os.getpid()}]: {asked}: "
               "client=unknown[127.0.0.1]" for r in caplog.records)


async def test_a_small_message_goes_in_one_request(make_ingress, dialogs, cleanup,
                                                   smtp_transaction) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    raw = message(300_000)
    assert (await smtp_transaction(d, "a@b.example", ["c@d.example"], stuffed(raw))
            ).startswith("250 2.0.0 Ok: queued as ")
    [got] = cleanup.servicer.submitted
    assert got.chunks == [raw]  # SubmitMessage: the whole content at once


async def test_peername_lookup_names_the_client(make_ingress, make_dns, dialogs, cleanup,
                                                caplog) -> None:
    # A PTR record for 127.0.0.1 and the A record that confirms it, on a
    # loopback dnsmasq: never the machine's own resolver.
    dns = make_dns({"ptr": {"1.0.0.127.in-addr.arpa": "client.postfleet.test"},
                    "hosts": {"client.postfleet.test": "127.0.0.1"}})
    caplog.set_level(logging.INFO, logger="postfleet.maillog")
    ingress = await make_ingress(smtpd_peername_lookup=True, dns_nameservers=dns.nameserver)
    d = await dialogs(ingress.port())
    assert (await send_hi(d, sender="")).startswith("250")
    assert cleanup.servicer.submitted[0].envelope.client.name == "client.postfleet.test"
    assert any(r.getMessage().endswith("client=client.postfleet.test[127.0.0.1]")
               for r in caplog.records)
    assert dns.queries() == [("PTR", "1.0.0.127.in-addr.arpa"), ("A", "client.postfleet.test")]


async def test_peername_must_resolve_back(make_ingress, make_dns, dialogs, cleanup) -> None:
    # The PTR names a host whose address is another: Postfix keeps "unknown".
    dns = make_dns({"ptr": {"1.0.0.127.in-addr.arpa": "forged.postfleet.test"},
                    "hosts": {"forged.postfleet.test": "192.0.2.7"}})
    ingress = await make_ingress(smtpd_peername_lookup=True, dns_nameservers=dns.nameserver)
    d = await dialogs(ingress.port())
    assert (await send_hi(d, sender="")).startswith("250")
    assert cleanup.servicer.submitted[0].envelope.client.name == "unknown"
    assert ("A", "forged.postfleet.test") in dns.queries()


async def test_cleanup_unavailable_answers_451(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    cleanup.servicer.mode = "not_queued"
    d = await dialogs(ingress.port())
    assert await send_hi(d) == QUEUE_ERROR
    assert cleanup.servicer.calls == 1 and not cleanup.servicer.submitted
    # The client retries in the same session once cleanup is back.
    cleanup.servicer.mode = "ok"
    assert (await send_hi(d)).startswith("250 2.0.0 Ok: queued as ")


async def test_cleanup_refusal_is_relayed(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    cleanup.servicer.mode = "refuse"
    d = await dialogs(ingress.port())
    assert await send_hi(d) == "550 5.7.1 Go away"


async def test_cleanup_not_running_answers_451(make_ingress, dialogs) -> None:
    ingress = await make_ingress(cleanup_address=f"127.0.0.1:{free_port()}")
    d = await dialogs(ingress.port())
    assert await send_hi(d) == QUEUE_ERROR


async def test_cleanup_hanging_answers_451_at_cleanup_timeout(
    make_ingress, dialogs, cleanup
) -> None:
    ingress = await make_ingress(cleanup_timeout="0.5s")
    cleanup.servicer.mode = "hang"
    d = await dialogs(ingress.port())
    assert await asyncio.wait_for(send_hi(d), 5) == QUEUE_ERROR


async def test_cleanup_stopped_mid_stream_answers_451(
    make_ingress, dialogs, cleanup, smtp_transaction
) -> None:
    ingress = await make_ingress()
    cleanup.servicer.mode = "midstream"
    d = await dialogs(ingress.port())
    pending = asyncio.create_task(
        smtp_transaction(d, "a@b.example", ["c@d.example"], stuffed(message(200_000))))
    await asyncio.wait_for(cleanup.servicer.entered.wait(), 10)
    await cleanup.stop()
    assert await pending == QUEUE_ERROR


@pytest.mark.slow
async def test_cleanup_killed_mid_stream_answers_451(
    make_ingress, dialogs, smtp_transaction
) -> None:
    peer = await asyncio.create_subprocess_exec(
        sys.executable, str(Path(__file__).with_name("cleanup_peer.py")),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert peer.stdout is not None
        port = int(await asyncio.wait_for(peer.stdout.readline(), 20))
        ingress = await make_ingress(cleanup_address=f"127.0.0.1:{port}")
        d = await dialogs(ingress.port())
        pending = asyncio.create_task(
            smtp_transaction(d, "a@b.example", ["c@d.example"], stuffed(message(100_000))))
        assert await asyncio.wait_for(peer.stdout.readline(), 10) == b"CHUNK\n"
        peer.kill()  # SIGKILL: the crash case
        assert await pending == QUEUE_ERROR
    finally:
        if peer.returncode is None:
            peer.kill()
        await peer.wait()


async def test_cleanup_gone_mid_call_for_good_answers_451_at_cleanup_timeout(
    make_ingress, dialogs, cleanup, smtp_transaction
) -> None:
    """The answer was lost with cleanup: smtpd waits for it to come back to
    ask again (test_lost_answer.py), but no longer than cleanup_timeout."""
    from prometheus_client import REGISTRY

    def resent() -> float:
        return REGISTRY.get_sample_value("postfleet_smtpd_submit_resends_total") or 0.0

    ingress = await make_ingress(cleanup_timeout="1s")
    d = await dialogs(ingress.port())
    assert (await send_hi(d)).startswith("250")  # the channel to cleanup is up
    resends = resent()
    cleanup.servicer.mode = "midstream"
    pending = asyncio.create_task(
        smtp_transaction(d, "a@b.example", ["c@d.example"], stuffed(message(2_000))))
    await asyncio.wait_for(cleanup.servicer.entered.wait(), 10)
    await cleanup.stop()
    assert await asyncio.wait_for(pending, 10) == QUEUE_ERROR
    assert resent() == resends + 1  # sent again; nobody there to answer


async def test_cleanup_s_own_failure_is_not_sent_again(make_ingress, dialogs, cleanup) -> None:
    """ABORTED: cleanup answered that nothing was queued; 451 at once."""
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    assert (await send_hi(d)).startswith("250")
    cleanup.servicer.mode = "not_queued"
    assert await send_hi(d) == QUEUE_ERROR
    assert cleanup.servicer.calls == 2 and len(cleanup.servicer.requested) == 2
