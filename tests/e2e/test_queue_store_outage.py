"""Invariant 1 against the real cleanup and a real database that goes away:
while the queue store cannot commit, the client hears 451 4.3.0 (never 250)
and nothing is queued; once the database is back, mail is accepted again and
everything accepted is delivered exactly once."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.pgcluster import PgCluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import eventually, queue_counts, relay_config, send, start

pytestmark = pytest.mark.slow


def _transaction(port: int, subject: str) -> str:
    """One SMTP transaction; the reply to the end of DATA."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        f = sock.makefile("rb")
        f.readline()
        for cmd in (b"EHLO client.test\r\n", b"MAIL FROM:<a@sender.test>\r\n",
                    b"RCPT TO:<bob@example.test>\r\n", b"DATA\r\n"):
            sock.sendall(cmd)
            line = f.readline()
            while line[3:4] == b"-":
                line = f.readline()
        sock.sendall(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
        return f.readline().decode().strip()


async def _accepted_again(port: int) -> str | None:
    reply = await asyncio.to_thread(_transaction, port, "after")
    return reply if reply.startswith("250") else None


async def test_451_while_the_database_is_down_then_everything_accepted_is_delivered(
        own_postgres: PgCluster, smtp_sink: SmtpSink,
        make_cluster: Callable[..., Cluster]) -> None:
    url = own_postgres.url()
    cluster = await start(make_cluster(url, relay_config(smtp_sink)))
    await send(cluster.smtp_port, "bob@example.test", subject="before")
    await smtp_sink.wait_for(1)

    await asyncio.to_thread(own_postgres.stop, "fast")
    refused = await asyncio.to_thread(_transaction, cluster.smtp_port, "during")
    assert refused.startswith("451 4.3.0"), refused

    await asyncio.to_thread(own_postgres.start)
    await eventually(lambda: _accepted_again(cluster.smtp_port), timeout=60,
                     what="a 250 once the database is back")
    await smtp_sink.wait_for(2, timeout=60)
    await eventually(lambda: _empty(url), what="an empty queue")
    subjects = Counter(m.message["Subject"] for m in smtp_sink.messages)
    assert subjects == Counter({"before": 1, "after": 1}), subjects


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}
