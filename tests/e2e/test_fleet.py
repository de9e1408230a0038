"""The fleet scales without loss (issue 8): per-destination concurrency holds
for the whole fleet, and qmgr and delivery scaled 1 -> 4 -> 1 under load
(scale-down as Kubernetes does it: SIGTERM, a grace period, then SIGKILL)
deliver every accepted message, duplicates counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.load import TAG_HEADER, send_load, tally
from postfleet.core.testing.sink import SmtpSink

from .conftest import FAST_QMGR, eventually, queue_counts, relay_config, start

pytestmark = pytest.mark.slow


def _tags(sink: SmtpSink) -> list[str]:
    return [t for m in sink.messages if (t := m.header(TAG_HEADER))]


async def test_three_qmgrs_and_three_deliveries_keep_one_destination_limit(
        postgres_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    config = relay_config(smtp_sink)
    config["qmgr"] = {**FAST_QMGR, "default_destination_concurrency_limit": 5}
    smtp_sink.handler.data_delay = 0.2  # a slow next hop: jobs pile up behind the limit
    cluster = await start(make_cluster(postgres_url, config), "cleanup", "ingress-smtp")
    report = await send_load(cluster.smtp_port, 150, sessions=10)
    assert len(report.accepted) == 150
    await asyncio.to_thread(cluster.start, "qmgr", "delivery")
    await asyncio.to_thread(cluster.scale, "qmgr", 3)
    await asyncio.to_thread(cluster.scale, "delivery", 3)
    await eventually(lambda: len(set(_tags(smtp_sink))) == 150, timeout=120,
                     what="150 messages at the sink")
    peak = smtp_sink.handler.max_in_transaction
    print(f"most deliveries the sink saw at once: {peak} (limit 5)")
    assert 2 <= peak <= 5
    assert tally(report, _tags(smtp_sink)).lost == []


async def test_qmgr_and_delivery_scaled_1_4_1_under_load_lose_nothing(
        postgres_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    config = relay_config(smtp_sink)
    config["qmgr"] = {**FAST_QMGR, "qmgr_lease_time": "10s"}
    cluster = await start(make_cluster(postgres_url, config))
    count = 5000
    load = asyncio.create_task(send_load(cluster.smtp_port, count, sessions=10))
    await eventually(lambda: len(smtp_sink.messages) >= 500, timeout=120, what="500 sent")
    await asyncio.to_thread(cluster.scale, "qmgr", 4)
    await asyncio.to_thread(cluster.scale, "delivery", 4)
    await eventually(lambda: len(smtp_sink.messages) >= 2500, timeout=180, what="2500 sent")
    # Down as Kubernetes does it: SIGTERM, a 5 s grace period, then SIGKILL.
    await asyncio.to_thread(cluster.scale, "qmgr", 1, 5.0)
    await asyncio.to_thread(cluster.scale, "delivery", 1, 5.0)
    report = await load
    load_done = time.monotonic()
    assert len(report.accepted) == count and report.gave_up == []

    async def drained() -> bool:
        arrived = set(_tags(smtp_sink))
        return (all(t in arrived for t in report.accepted)
                and await queue_counts(postgres_url) == {"messages": 0, "recipients": 0})

    await eventually(drained, timeout=180, what="every accepted message delivered")
    counted = tally(report, _tags(smtp_sink))
    print(f"accepted {counted.accepted}, lost {len(counted.lost)}, duplicates "
          f"{counted.duplicates} ({counted.duplicate_rate:.3%}), drained "
          f"{time.monotonic() - load_done:.1f}s after the load, load {report.rate:.0f} msg/s")
    assert counted.lost == []
    assert counted.duplicate_rate <= 0.001
