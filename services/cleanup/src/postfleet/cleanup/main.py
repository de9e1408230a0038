"""cleanup's wiring: settings, database, bus, routing (KV watch), gRPC server,
lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.cleanup.submit import CleanupService
from postfleet.core.bus import subjects
from postfleet.core.bus.connect import close, connect, ensure_bus
from postfleet.core.db.engine import create_engine
from postfleet.core.db.migrate import upgrade
from postfleet.core.logs import setup_logging
from postfleet.core.proto.cleanup.v1 import cleanup_pb2_grpc
from postfleet.core.routing.store import RoutingView
from postfleet.core.service import Service

log = logging.getLogger("postfleet.cleanup")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]


async def run(settings: CleanupSettings) -> None:
    engine = create_engine(settings.database_url)
    await upgrade(engine)
    nc = await connect(settings.nats_url, "cleanup")
    # Address rewriting follows the routing snapshot live (DESIGN invariant 6).
    routing = RoutingView()
    await routing.start(await ensure_bus(nc))

    async def wake(_count: int) -> None:
        # Lost wake-ups are harmless: qmgr rescans the queue (invariant 3).
        with contextlib.suppress(Exception):
            await nc.publish(subjects.QUEUE_INCOMING, b"")

    writer = QueueWriter(engine, max_batch=settings.cleanup_commit_batch, on_commit=wake)
    server = grpc.aio.server(options=GRPC_OPTIONS)
    cleanup_pb2_grpc.add_CleanupServicer_to_server(CleanupService(settings, writer, routing),
                                                 server)
    server.add_insecure_port(settings.cleanup_listen)
    async with Service("cleanup", settings) as svc:
        svc.add_check("nats", lambda: nc.is_connected)
        writer.start()
        await server.start()
        log.info("cleanup Submit on %s", settings.cleanup_listen)
        svc.set_ready(True)
        await svc.stopping.wait()
        svc.set_ready(False)
        # Drain: refuse new calls, let calls in flight commit.
        await server.stop(grace=10)
        await writer.stop()
    await routing.stop()
    await close(nc)
    await engine.dispose()


def main() -> None:
    settings = CleanupSettings()
    setup_logging("cleanup", settings.log_format, settings.log_level)
    asyncio.run(run(settings))
