"""4xx from the next hop defers and a later attempt delivers; 5xx bounces
to the sender with a delivery status notification."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import delivery_log, eventually, relay_config, send, start

pytestmark = pytest.mark.slow


async def test_a_4xx_defers_and_a_later_attempt_delivers(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    smtp_sink.handler.rcpt_replies["bob@example.test"] = "450 4.2.0 <bob@example.test>: busy"
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    qid = await send(cluster.smtp_port, "bob@example.test")
    deferred = await eventually(lambda: delivery_log(database_url), what="a deferral")
    assert [(r.queue_id, r.status, r.dsn) for r in deferred] == [(qid, "deferred", "4.2.0")]
    assert "busy" in deferred[0].reply
    smtp_sink.handler.rcpt_replies.clear()  # the next hop recovers
    (received,) = await smtp_sink.wait_for(1, timeout=30)
    assert f"id {qid}" in received.message["Received"]
    log = await eventually(
        lambda: _statuses(database_url, 2), what="the sent row after the deferral")
    assert log == ["deferred", "sent"]


async def _statuses(url: str, n: int) -> list[str]:
    rows = [r.status for r in await delivery_log(url)]
    return rows if len(rows) >= n else []


async def test_a_5xx_bounces_to_the_sender(
        database_url: str, make_cluster: Callable[..., Cluster]) -> None:
    with SmtpSink() as next_hop, SmtpSink() as senders_mx:
        next_hop.handler.rcpt_replies["nobody@example.test"] = (
            "550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown")
        config = relay_config(next_hop, transport_maps={
            "example.test": f"smtp:{next_hop.nexthop}",
            "sender.test": f"smtp:{senders_mx.nexthop}",
        })
        cluster = await start(make_cluster(database_url, config))
        qid = await send(cluster.smtp_port, "nobody@example.test")
        (notice,) = await senders_mx.wait_for(1, timeout=30)
    assert notice.sender == "<>" and notice.recipients == ["alice@sender.test"]  # null sender
    msg = notice.message
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg.get_content_type() == "multipart/report"
    text = notice.data.decode()
    assert "Status: 5.1.1" in text and "User unknown" in text
    assert f"X-Postfix-Queue-ID: {qid}" in text
    assert next_hop.messages == []
