"""One message through every role: swaks → ingress-smtp → cleanup → queue →
qmgr → delivery → a real SMTP server, on PostgreSQL and on SQLite."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import delivery_log, eventually, queue_counts, relay_config, start

pytestmark = pytest.mark.slow


def swaks(port: int, to: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--from", "alice@sender.test", "--to", to,
         "--helo", "client.test", "--header", "Subject: e2e", "--body", "hello postfleet",
         "--timeout", "30", *extra],
        capture_output=True, text=True, timeout=60,
    )


async def test_a_message_travels_every_role_to_the_next_hop(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    sent = await asyncio.to_thread(swaks, cluster.smtp_port, "bob@example.test")
    assert sent.returncode == 0, sent.stdout + sent.stderr
    queued = [ln for ln in sent.stdout.splitlines() if "queued as" in ln]
    assert queued and "<-  250 2.0.0 Ok: queued as " in queued[0]
    queue_id = queued[0].rsplit(" ", 1)[1]

    (received,) = await smtp_sink.wait_for(1)
    assert received.sender == "alice@sender.test" and received.recipients == ["bob@example.test"]
    msg = received.message
    assert f"with ESMTP id {queue_id}" in msg["Received"]
    assert "from client.test" in msg["Received"] and "for <bob@example.test>" in msg["Received"]
    assert msg["Message-ID"] and msg["Date"] and msg["Subject"] == "e2e"
    assert "hello postfleet" in msg.get_payload()

    log = await eventually(lambda: delivery_log(database_url), what="delivery log row")
    assert [(r.queue_id, r.address, r.status, r.dsn) for r in log] == [
        (queue_id, "bob@example.test", "sent", "2.0.0")]
    assert log[0].relay.endswith(f"[127.0.0.1]:{smtp_sink.port}")
    assert await eventually(
        lambda: _empty(database_url), what="the message to leave the queue")


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}


async def test_an_unauthorised_relay_attempt_is_refused_and_nothing_is_queued(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    sent = await asyncio.to_thread(swaks, cluster.smtp_port, "victim@elsewhere.test")
    assert sent.returncode != 0
    assert "<** 554 5.7.1 <victim@elsewhere.test>: Relay access denied" in sent.stdout
    assert await queue_counts(database_url) == {"messages": 0, "recipients": 0}
    assert smtp_sink.messages == []
