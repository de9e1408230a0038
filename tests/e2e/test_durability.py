"""Durable accept (invariant 1) and no loss when processes die (invariant 2)."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import delivery_log, eventually, queue_counts, relay_config, send, start

pytestmark = pytest.mark.slow


def _smtp_lines(sock: socket.socket, *commands: bytes) -> list[str]:
    replies = []
    f = sock.makefile("rb")
    replies.append(f.readline().decode())  # greeting
    for cmd in commands:
        sock.sendall(cmd)
        line = f.readline().decode()
        while line[3:4] == "-":
            line = f.readline().decode()
        replies.append(line)
    return replies


async def test_cleanup_killed_mid_data_gets_4xx_and_nothing_is_stored(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    sock = socket.create_connection(("127.0.0.1", cluster.smtp_port), timeout=30)
    try:
        replies = await asyncio.to_thread(
            _smtp_lines, sock, b"EHLO client.test\r\n", b"MAIL FROM:<a@sender.test>\r\n",
            b"RCPT TO:<bob@example.test>\r\n", b"DATA\r\n")
        assert replies[-1].startswith("354")
        sock.sendall(b"Subject: half\r\n\r\nfirst half of the body\r\n")
        cluster.kill("cleanup")  # dies while the client is mid-DATA
        sock.sendall(b"second half\r\n.\r\n")
        reply = await asyncio.to_thread(sock.makefile("rb").readline)
    finally:
        sock.close()
    assert reply.decode().startswith("451 4.3.0"), reply
    assert await queue_counts(database_url) == {"messages": 0, "recipients": 0}


async def test_mail_accepted_while_delivery_is_down_is_delivered_when_it_starts(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)),
                          "cleanup", "qmgr", "ingress-smtp")
    qid = await send(cluster.smtp_port, "bob@example.test")
    await asyncio.sleep(1.5)
    assert smtp_sink.messages == []
    assert await queue_counts(database_url) == {"messages": 1, "recipients": 1}
    await asyncio.to_thread(cluster.start, "delivery")
    (received,) = await smtp_sink.wait_for(1)
    assert f"id {qid}" in received.message["Received"]


async def test_killing_every_role_and_restarting_delivers_everything_accepted(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    smtp_sink.handler.data_replies = []
    # Hold delivery back so accepted mail is sitting in the queue and on the
    # bus when everything dies.
    cluster.kill("delivery")
    ids = [await send(cluster.smtp_port, f"u{i}@example.test", subject=f"m{i}")
           for i in range(20)]
    cluster.kill()  # kill -9 every role
    await asyncio.to_thread(cluster.start)
    await smtp_sink.wait_for(20, timeout=60)
    log = await eventually(
        lambda: _all_sent(database_url, len(ids)), what="20 sent rows in the delivery log")
    # Delivery was dead before anything was sent, so nothing was in flight:
    # each message arrives exactly once (a set would hide a duplicate).
    got = Counter(m.message["Subject"] for m in smtp_sink.messages)
    assert got == Counter({f"m{i}": 1 for i in range(20)}), got
    assert Counter(r.queue_id for r in log) == Counter(ids)


async def _all_sent(url: str, n: int) -> list:
    rows = [r for r in await delivery_log(url) if r.status == "sent"]
    return rows if len({r.queue_id for r in rows}) >= n else []
