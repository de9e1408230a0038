"""cleanup's wiring: the gRPC Submit service and the group-committing queue
writer on the shared runtime (queue store, bus, routing view)."""

from __future__ import annotations

import contextlib
import logging

import grpc

from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.cleanup.submit import CleanupService
from postfleet.core.bus import subjects
from postfleet.core.proto.cleanup.v1 import cleanup_pb2_grpc
from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service

log = logging.getLogger("postfleet.cleanup")

GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
]


# Calls in flight at a stop have this long to commit.
DRAIN_GRACE_S = 10.0


async def run(settings: CleanupSettings) -> None:
    # Address rewriting follows the routing snapshot live (DESIGN invariant 6).
    async with role_runtime("cleanup", settings, routing=True) as rt:

        async def wake(_count: int) -> None:
            # Lost wake-ups are harmless: qmgr rescans the queue (invariant 3).
            with contextlib.suppress(Exception):
                await rt.nc.publish(subjects.QUEUE_INCOMING, b"")

        writer = QueueWriter(rt.db(), max_batch=settings.cleanup_commit_batch, on_commit=wake)
        server = grpc.aio.server(options=GRPC_OPTIONS)
        cleanup_pb2_grpc.add_CleanupServicer_to_server(
            CleanupService(settings, writer, rt.routes()), server)
        server.add_insecure_port(settings.cleanup_listen)
        async with Service("cleanup", settings, drain_timeout=DRAIN_GRACE_S) as svc:
            svc.add_check("nats", lambda: rt.nc.is_connected)
            writer.start()
            await server.start()
            log.info("cleanup Submit on %s", settings.cleanup_listen)
            svc.set_ready(True)
            await svc.stopping.wait()
            svc.set_ready(False)
            # Drain: refuse new calls, let calls in flight commit.
            await server.stop(grace=DRAIN_GRACE_S)
            await writer.stop()


def main() -> None:
    run_role("cleanup", CleanupSettings, run)
