"""The scheduler groups claimed recipients into jobs and keeps each
destination within its concurrency limit (default_destination_concurrency_limit,
or the snapshot's per-next-hop limit) and rate delay across every replica
sharing the queue store; an applied result frees a slot, and a dead
replica's slots come back with its leases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.qmgr.results import ResultPolicy, apply_results
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

from .conftest import queue_message

ROUTES = {"transport_maps": {"a.test": "smtp:[127.0.0.1]:2601",
                             "b.test": "smtp:[127.0.0.1]:2602"}}


def _scheduler(engine: AsyncEngine, owner: str = "q1", published: list | None = None,
               settings: dict | None = None, **routing: object) -> tuple[Scheduler, list]:
    sent: list[delivery_pb2.Job] = [] if published is None else published

    async def publish(job: delivery_pb2.Job) -> None:
        sent.append(job)

    view = RoutingView(RoutingSnapshot.model_validate({**ROUTES, **routing}))
    config = {"default_destination_concurrency_limit": 2, "qmgr_owner": owner,
              **(settings or {})}
    return Scheduler(QmgrSettings(**config), engine, view, publish), sent


POLICY = ResultPolicy(300, 4000, 86400)


def _delivered(job: delivery_pb2.Job) -> delivery_pb2.Result:
    return delivery_pb2.Result(
        job_id=job.job_id, queue_id=job.queue_id, attempt=job.attempt,
        transport=job.transport, nexthop=job.nexthop, relay="sink[127.0.0.1]:2601",
        recipients=[delivery_pb2.RecipientResult(
            id=r.id, address=r.address, outcome=delivery_pb2.OUTCOME_SENT, dsn="2.0.0",
            reply="250 ok") for r in job.recipients])


async def _finish(engine: AsyncEngine, job: delivery_pb2.Job) -> None:
    """Apply a delivered result for the job, as the results consumer does."""
    await apply_results(engine, [_delivered(job)], POLICY, "mx.test")


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

    await scheduler.scan()  # nothing frees a slot: nothing more goes out
    assert len(published) == 3
    await _finish(engine, published[0])
    await _finish(engine, published[0])  # a repeated result frees nothing more
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


async def test_replicas_together_never_exceed_a_destination_limit(engine: AsyncEngine) -> None:
    for i in range(6):
        await queue_message(engine, [f"u{i}@a.test"])
    published: list = []
    one, _ = _scheduler(engine, "q1", published)
    two, _ = _scheduler(engine, "q2", published)
    await one.scan()
    await two.scan()
    await one.scan()
    assert len(published) == 2  # the limit (2) holds for both replicas together
    assert sum(len(q) for s in (one, two) for q in s.waiting.values()) == 4
    await _finish(engine, published[0])  # applied by whichever replica
    await two.scan()
    await one.scan()
    assert len(published) == 3


async def test_a_dead_replicas_slots_come_back_with_its_lease(engine: AsyncEngine) -> None:
    for i in range(3):
        await queue_message(engine, [f"u{i}@a.test"])
    published: list = []
    dead, _ = _scheduler(engine, "dead", published, {"qmgr_lease_time": 1})
    await dead.scan()  # takes both slots, then "dies": nobody renews
    alive, _ = _scheduler(engine, "alive", published, {"qmgr_lease_time": 1})
    await alive.scan()
    assert len(published) == 2
    await asyncio.sleep(1.2)
    await alive.scan()
    # The third message, and the two the dead replica held, all go out again.
    assert len(published) == 4
    assert {j.job_id.split("/")[0] for j in published[2:]} == {"alive"}


async def test_a_rate_delay_spaces_deliveries_to_a_destination(engine: AsyncEngine) -> None:
    for i in range(3):
        await queue_message(engine, [f"u{i}@a.test"])
    scheduler, published = _scheduler(
        engine, settings={"default_destination_rate_delay": 1,
                          "default_destination_concurrency_limit": 10})
    await scheduler.scan()
    assert len(published) == 1  # one at a time
    await _finish(engine, published[0])
    await scheduler.scan()
    assert len(published) == 1  # the delay has not passed
    await asyncio.sleep(1.1)
    await scheduler.scan()
    assert len(published) == 2


async def test_a_results_batch_refills_the_slots_it_frees_without_a_scan(
        engine: AsyncEngine) -> None:
    """The transaction that applies results books waiting jobs into the
    slots it freed; they go out as it commits, not at the next scan."""
    for i in range(4):
        await queue_message(engine, [f"u{i}@a.test"])
    scheduler, published = _scheduler(engine)
    await scheduler.scan()
    assert len(published) == 2 and scheduler.waiting  # two wait for a slot
    done = published[:2]
    async with scheduler.booking:
        applied = await apply_results(engine, [_delivered(j) for j in done], POLICY,
                                      "mx.test", refill=scheduler.refill)
        await scheduler.publish_granted(applied.granted)
    assert len(published) == 4 and not scheduler.waiting
    assert {j.queue_id for j in published[2:]}.isdisjoint({j.queue_id for j in done})
    # The refill took the freed slots: a scan now finds the destination full.
    await queue_message(engine, ["late@a.test"])
    await scheduler.scan()
    assert len(published) == 4 and scheduler.waiting


async def test_a_failed_results_transaction_books_nothing(engine: AsyncEngine) -> None:
    """If the transaction that would refill fails, the waiting jobs stay
    waiting (nothing published, no slot held) and a later scan sends them."""
    for i in range(3):
        await queue_message(engine, [f"u{i}@a.test"])
    scheduler, published = _scheduler(engine, settings={
        "default_destination_concurrency_limit": 1})
    await scheduler.scan()
    assert len(published) == 1

    async def refill_then_fail(conn: object) -> dict[str, list[str]]:
        await scheduler.refill(conn)  # type: ignore[arg-type]
        raise RuntimeError("the database went away")

    job = published[0]
    with pytest.raises(RuntimeError):
        await apply_results(engine, [_delivered(job)], POLICY, "mx.test",
                            refill=refill_then_fail)
    assert len(published) == 1 and sum(len(q) for q in scheduler.waiting.values()) == 2
    await _finish(engine, job)  # the result applies again (redelivered), freeing the slot
    await scheduler.scan()
    assert len(published) == 2
