"""qmgr's wiring: scheduler, results consumer and admin API on the shared
runtime (queue store, bus, routing view)."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg

from postfleet.core.bus import subjects
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service
from postfleet.qmgr.api import make_api
from postfleet.qmgr.consumer import consume_results
from postfleet.qmgr.scheduler import Scheduler
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

        async def on_done(msg: Msg) -> None:
            if scheduler.done(msg.data.decode()):
                scheduler.wake()

        await rt.nc.subscribe(subjects.QUEUE_INCOMING, cb=on_wakeup)
        await rt.nc.subscribe(subjects.done_subject(settings.qmgr_owner), cb=on_done)
        async with Service("qmgr", settings, extra_app=make_api(engine, scheduler)) as svc:
            svc.add_check("nats", lambda: rt.nc.is_connected)
            tasks = [
                asyncio.create_task(scheduler.run(svc.stopping), name="scheduler"),
                asyncio.create_task(
                    consume_results(rt.nc, js, engine, scheduler, settings, svc.stopping),
                    name="results"),
            ]
            svc.set_ready(True)
            log.info("qmgr %s running", settings.qmgr_owner)
            await svc.stopping.wait()
            svc.set_ready(False)
            await asyncio.wait(tasks, timeout=10)
            for t in tasks:
                t.cancel()
            await scheduler.release_waiting()


def main() -> None:
    run_role("qmgr", QmgrSettings, run)
