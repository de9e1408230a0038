"""qmgr's wiring: settings, database, bus, routing, scheduler, results, API."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import close, connect, ensure_bus
from postfleet.core.db.engine import create_engine
from postfleet.core.db.migrate import upgrade
from postfleet.core.logs import setup_logging
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.store import RoutingView
from postfleet.core.service import Service
from postfleet.qmgr.api import make_api
from postfleet.qmgr.consumer import consume_results
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger("postfleet.qmgr")


async def run(settings: QmgrSettings) -> None:
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    nc = await connect(settings.nats_url, "qmgr")
    js = await ensure_bus(nc)
    routing = RoutingView()
    await routing.start(js)

    async def publish(job: delivery_pb2.Job) -> None:
        await js.publish(subjects.delivery_subject(job.transport), job.SerializeToString(),
                         headers={"Nats-Msg-Id": job.job_id})

    scheduler = Scheduler(settings, engine, routing, publish)
    routing.on_change(lambda _snapshot: scheduler.wake())

    async def on_wakeup(_msg: Msg) -> None:
        scheduler.wake()

    async def on_done(msg: Msg) -> None:
        if scheduler.done(msg.data.decode()):
            scheduler.wake()

    await nc.subscribe(subjects.QUEUE_INCOMING, cb=on_wakeup)
    await nc.subscribe(subjects.done_subject(settings.qmgr_owner), cb=on_done)
    api = make_api(engine, scheduler)
    async with Service("qmgr", settings, extra_app=api) as svc:
        svc.add_check("nats", lambda: nc.is_connected)
        tasks = [
            asyncio.create_task(scheduler.run(svc.stopping), name="scheduler"),
            asyncio.create_task(
                consume_results(nc, js, engine, scheduler, settings, svc.stopping),
                name="results",
            ),
        ]
        svc.set_ready(True)
        log.info("qmgr %s running", settings.qmgr_owner)
        await svc.stopping.wait()
        svc.set_ready(False)
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()
        await scheduler.release_waiting()
    await routing.stop()
    await close(nc)
    await engine.dispose()


def main() -> None:
    settings = QmgrSettings()
    setup_logging("qmgr", settings.log_format, settings.log_level)
    asyncio.run(run(settings))
