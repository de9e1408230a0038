"""qmgr's wiring: scheduler, results consumer, admin API and the flush
service ETRN asks (``subjects.FLUSH_SITE``) on the shared runtime (queue
store, bus, routing view).

Postfix parameters: fast_flush_domains (the sites ETRN may flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.db import queue
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.tables import domain_list
from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service
from postfleet.qmgr import metrics
from postfleet.qmgr.api import make_api
from postfleet.qmgr.consumer import consume_results
from postfleet.qmgr.scheduler import LeaseKeeper, Scheduler
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger("postfleet.qmgr")


async def run(settings: QmgrSettings) -> None:
    async with role_runtime("qmgr", settings, routing=True) as rt:
        engine, js = rt.db(), rt.js

        async def publish(job: delivery_pb2.Job) -> None:
            await js.publish(subjects.delivery_subject(job.transport), job.SerializeToString(),
                             headers={"Nats-Msg-Id": job.job_id})

        scheduler = Scheduler(settings, engine, rt.routes(), publish)
        rt.routes().on_change(lambda _snapshot: scheduler.wake())

        async def on_wakeup(_msg: Msg) -> None:
            scheduler.wake()

        async def on_slots_freed(msg: Msg) -> None:
            if (msg.headers or {}).get(subjects.SENDER) == settings.qmgr_owner:
                return  # our own batch: its freed slots were refilled as it committed
            scheduler.finished(msg.data.decode().split("\n"))
            if scheduler.waiting:
                scheduler.wake()

        async def on_flush_site(msg: Msg) -> None:
            """ETRN: the site's deferred mail is due now (Postfix's flush)."""
            site = msg.data.decode(errors="replace").strip().lower()
            if not flushable(settings, rt.routes().snapshot, site):
                await msg.respond(b"deny")
                return
            count = await queue.reschedule_site(engine, site, datetime.now(UTC))
            log.info("flush %s: %d recipients due now", site, count)
            scheduler.wake()
            await msg.respond(b"ok")

        await rt.nc.subscribe(subjects.QUEUE_INCOMING, cb=on_wakeup)
        await rt.nc.subscribe(subjects.FLUSH_SITE, queue="qmgr", cb=on_flush_site)
        await rt.nc.subscribe(subjects.SLOTS_FREED, cb=on_slots_freed)
        async with Service("qmgr", settings, extra_app=make_api(engine, scheduler)) as svc:
            svc.add_check("nats", lambda: rt.nc.is_connected)
            caught_up = asyncio.Event()
            tasks = [
                asyncio.create_task(
                    consume_results(rt.nc, js, engine, scheduler, settings, svc.stopping,
                                    caught_up), name="results"),
                asyncio.create_task(LeaseKeeper(settings, engine, scheduler).run(svc.stopping),
                                    name="leases"),
            ]
            await take_back_own_work(settings, engine, js, caught_up)
            tasks.append(asyncio.create_task(scheduler.run(svc.stopping), name="scheduler"))
            tasks.append(asyncio.create_task(
                watch_queue_shape(engine, settings.qmgr_queue_shape_interval, svc.stopping),
                name="queue-shape"))
            svc.set_ready(True)
            log.info("qmgr %s running", settings.qmgr_owner)
            await svc.stopping.wait()
            svc.set_ready(False)
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
            await scheduler.release_waiting()


def flushable(settings: QmgrSettings, snapshot: RoutingSnapshot, site: str) -> bool:
    """fast_flush_domains (Postfix's default: $relay_domains) names the site."""
    if "$relay_domains" in settings.fast_flush_domains and snapshot.relay_domain_list.match(
            site):
        return True
    listed = [d for d in settings.fast_flush_domains if not d.startswith("$")]
    return bool(listed) and domain_list(listed, (), parent_style=True).match(site)


async def take_back_own_work(
    settings: QmgrSettings, engine: AsyncEngine, js: JetStreamContext, caught_up: asyncio.Event
) -> None:
    """What an earlier life of this qmgr (same qmgr_owner) held becomes
    claimable now, once every result already on the bus is applied -- those
    waiting, and those a dead process had fetched but not acked, which
    JetStream hands out again after the results' ack wait -- or once
    qmgr_takeback_wait has passed. A job that finished meanwhile then wins
    over a second attempt, and one still queued is recognised as stale by
    delivery. Usually that is at once: a qmgr killed between batches leaves
    nothing unacked."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_results_settled(js, caught_up), settings.qmgr_takeback_wait)
    taken = await queue.take_back(engine, settings.qmgr_owner)
    if taken:
        log.info("qmgr %s took back %d recipients from its previous run",
                 settings.qmgr_owner, taken)


async def _results_settled(js: JetStreamContext, caught_up: asyncio.Event) -> None:
    await caught_up.wait()
    while True:
        with contextlib.suppress(Exception):  # NATS away: ask again
            info = await js.consumer_info(subjects.RESULTS_STREAM, subjects.RESULTS_CONSUMER)
            if not info.num_ack_pending and not info.num_pending:
                return
        await asyncio.sleep(0.2)


async def watch_queue_shape(engine: AsyncEngine, every: float, stopping: asyncio.Event) -> None:
    """Read the queue's shape for the postfix_showq_* metrics until stopped."""
    while not stopping.is_set():
        try:
            metrics.QUEUE_SHAPE.shapes = await queue.queue_shape(engine, datetime.now(UTC))
        except Exception as exc:  # the queue store away: the last shape stays
            log.warning("reading the queue shape failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every)


def main() -> None:
    run_role("qmgr", QmgrSettings, run)
