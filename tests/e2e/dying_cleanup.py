"""cleanup's own Submit service, queue writer and queue store, in a process
that kill -9s itself right after its Nth commit: the message is committed,
its answer never sent. The crash the lost-answer test needs at an exact
moment (a kill from outside only lands there by chance).

Settings come from the environment as for ``postfleet run cleanup``; argv[1]
is N. Prints READY once it listens."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc

from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.cleanup.submit import CleanupService
from postfleet.core.db.engine import create_engine
from postfleet.core.proto.cleanup.v1 import cleanup_pb2_grpc


async def main(die_at: int) -> None:
    settings = CleanupSettings()
    commits = 0

    async def after_commit(_count: int) -> None:
        # Runs in the writer task once the COMMIT returned, before any
        # Submit handler can send its answer.
        nonlocal commits
        commits += 1
        if commits >= die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    writer = QueueWriter(create_engine(settings.database_url), on_commit=after_commit)
    writer.start()
    server = grpc.aio.server()
    cleanup_pb2_grpc.add_CleanupServicer_to_server(CleanupService(settings, writer), server)
    server.add_insecure_port(settings.cleanup_listen)
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
