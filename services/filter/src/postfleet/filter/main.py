"""filter's wiring: the chain (checks, clamd, spamd), the cleanup channel
and the job consumer on the shared runtime (the queue store, read only,
and the bus)."""

from __future__ import annotations

import asyncio

import grpc

from postfleet.core.proto.cleanup.v1 import cleanup_pb2_grpc
from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service
from postfleet.filter.chain import Chain
from postfleet.filter.jobs import FilterJobs
from postfleet.filter.settings import FilterSettings


async def run(settings: FilterSettings) -> None:
    chain = Chain(settings)  # a bad table stops the role before it takes work
    # One database connection per message scanned at once: reading a job's
    # message never waits for another job's.
    async with role_runtime("filter", settings, writer=False,
                            pool_size=settings.filter_process_limit) as rt:
        channel = grpc.aio.insecure_channel(settings.cleanup_address)
        try:
            jobs = FilterJobs(settings, rt.js, rt.db(), cleanup_pb2_grpc.CleanupStub(channel),
                              chain)
            async with Service("filter", settings,
                               drain_timeout=settings.filter_drain_timeout) as svc:
                svc.add_check("nats", lambda: rt.nc.is_connected)
                await jobs.setup()
                loop = asyncio.create_task(jobs.run(svc.stopping))
                svc.set_ready(True)
                await svc.stopping.wait()
                svc.set_ready(False)
                await asyncio.wait([loop], timeout=settings.filter_fetch_timeout + 1)
                loop.cancel()
                await jobs.drain(settings.filter_drain_timeout)
        finally:
            await channel.close()


def main() -> None:
    run_role("filter", FilterSettings, run)
