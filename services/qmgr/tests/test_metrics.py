"""qmgr's queue metrics: the queue store's shape (messages per queue, their
sizes and ages as histogram buckets) on SQLite and PostgreSQL, served as
postfix_exporter's postfix_showq_* histograms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message
from postfleet.core.db.queue import queue_shape
from postfleet.qmgr.metrics import QueueShapeCollector

from .conftest import fill


async def test_queue_shape_counts_each_queue_by_size_and_age(engine: AsyncEngine) -> None:
    ids = await fill(engine)
    now = datetime.now(UTC)
    async with engine.begin() as conn:  # the deferred message is two hours old
        await conn.execute(update(Message).where(Message.queue_id == ids["deferred"])
                           .values(arrived_at=now - timedelta(hours=2), size=20000))
    shapes = {s.state: s for s in await queue_shape(engine, now)}
    assert list(shapes) == ["incoming", "active", "deferred", "hold"]
    assert all(s.count == 1 for s in shapes.values())
    deferred = shapes["deferred"]
    assert deferred.size_sum == 20000
    assert deferred.size_le == [0, 0, 1, 1, 1, 1, 1]  # <= 1e3, 1e4, 1e5, ...
    assert deferred.age_le == [0, 0, 0, 1, 1, 1, 1, 1]  # <= 10 s, 100 s, 1000 s, 1e4 s ...
    assert 7100 < deferred.age_sum < 7300
    assert shapes["hold"].size_le[0] == 1 and shapes["hold"].age_le[0] == 1

    collector = QueueShapeCollector()
    collector.shapes = list(shapes.values())
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'postfix_showq_message_size_bytes_count{queue="deferred"} 1.0' in text
    assert 'postfix_showq_message_size_bytes_bucket{le="10000",queue="deferred"} 0.0' in text
    assert 'postfix_showq_message_age_seconds_bucket{le="+Inf",queue="hold"} 1.0' in text


async def test_an_empty_queue_has_every_queue_at_zero(engine: AsyncEngine) -> None:
    shapes = await queue_shape(engine, datetime.now(UTC))
    assert [(s.state, s.count, s.size_sum) for s in shapes] == [
        ("incoming", 0, 0), ("active", 0, 0), ("deferred", 0, 0), ("hold", 0, 0)]
