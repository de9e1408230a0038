"""The scheduler groups claimed recipients into jobs and keeps each
destination within its concurrency limit (default_destination_concurrency_limit,
or the snapshot's per-next-hop limit); a finished job frees a slot."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

from .conftest import queue_message

ROUTES = {"transport_maps": {"a.test": "smtp:[127.0.0.1]:2601",
                             "b.test": "smtp:[127.0.0.1]:2602"}}


def _scheduler(engine: AsyncEngine, **routing: object) -> tuple[Scheduler, list]:
    published: list[delivery_pb2.Job] = []

    async def publish(job: delivery_pb2.Job) -> None:
        published.append(job)

    view = RoutingView(RoutingSnapshot.model_validate({**ROUTES, **routing}))
    settings = QmgrSettings(default_destination_concurrency_limit=2, qmgr_owner="q1")
    return Scheduler(settings, engine, view, publish), published


async def test_each_destination_gets_at_most_its_limit_of_jobs_in_flight(
        engine: AsyncEngine) -> None:
    for i in range(5):
        await queue_message(engine, [f"u{i}@a.test"])
    await queue_message(engine, ["x@b.test", "y@b.test"])  # one message: one job
    scheduler, published = _scheduler(engine)
    await scheduler.scan()
    by_hop = [j.nexthop for j in published]
    assert by_hop.count("[127.0.0.1]:2601") == 2 and by_hop.count("[127.0.0.1]:2602") == 1
    b_job = next(j for j in published if j.nexthop.endswith("2602"))
    assert [r.address for r in b_job.recipients] == ["x@b.test", "y@b.test"]
    assert b_job.job_id.startswith("q1/") and b_job.attempt == 1

    assert scheduler.done(published[0].job_id)
    assert not scheduler.done(published[0].job_id)  # a repeated result frees nothing more
    await scheduler.scan()
    assert [j.nexthop for j in published].count("[127.0.0.1]:2601") == 3


async def test_a_per_next_hop_limit_from_the_snapshot_overrides_the_default(
        engine: AsyncEngine) -> None:
    for i in range(5):
        await queue_message(engine, [f"u{i}@a.test"])
    scheduler, published = _scheduler(
        engine, destination_concurrency_limits={"smtp:[127.0.0.1]:2601": 4})
    await scheduler.scan()
    assert len(published) == 4
