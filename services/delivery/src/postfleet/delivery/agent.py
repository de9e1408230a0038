"""The delivery role's parts, put together: store, transports, connection
cache and one job consumer per transport. ``main`` builds one around a NATS
connection and a database engine; tests run one in-process the same way.

Postfix parameters: default_process_limit (concurrent jobs per process,
shared fairly by the transports' consumers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.delivery.error import DiscardTransport, ErrorTransport
from postfleet.delivery.hostlookup import Resolver, resolver_for
from postfleet.delivery.jobs import JobConsumer, JobRunner, Slots, Transport
from postfleet.delivery.lmtp import LmtpTransport
from postfleet.delivery.local import LocalTransport, VirtualTransport
from postfleet.delivery.pipe import PipeTransport, parse_pipe_service
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.smtp import SmtpTransport
from postfleet.delivery.store import MessageStore

log = logging.getLogger(__name__)

# Transport name -> delivery agent. Postfix's master.cf runs its smtp client
# under both "smtp" and "relay" (relay_transport); every other name is its
# own agent; pipe(8) services are named in pipe_transports.
SMTP_CLIENT_TRANSPORTS = ("smtp", "relay")
KNOWN_TRANSPORTS = (*SMTP_CLIENT_TRANSPORTS, "lmtp", "local", "virtual", "error", "discard")


def build_transports(
    names: list[str], settings: DeliverySettings, pool: SessionPool, resolver: Resolver | None,
    routing: Callable[[], RoutingSnapshot] | None = None,
) -> dict[str, Transport]:
    resolver = resolver or resolver_for(settings)
    transports: dict[str, Transport] = {}
    smtp: SmtpTransport | None = None
    for name in names:
        if name in SMTP_CLIENT_TRANSPORTS:
            smtp = smtp or SmtpTransport(settings, pool, resolver, routing)
            transports[name] = smtp
        elif name == "lmtp":
            transports[name] = LmtpTransport(settings, resolver)
        elif name == "local":
            transports[name] = LocalTransport(settings)
        elif name == "virtual":
            transports[name] = VirtualTransport(settings)
        elif name == "error":
            transports[name] = ErrorTransport()
        elif name == "discard":
            transports[name] = DiscardTransport()
        elif name in settings.pipe_transports:
            transports[name] = PipeTransport(name, parse_pipe_service(
                settings.pipe_transports[name]), settings.command_time_limit)
        else:
            known = ", ".join(KNOWN_TRANSPORTS)
            raise ValueError(f"transport {name!r} is not implemented (known: {known})")
    return transports


class DeliveryAgent:
    def __init__(
        self,
        settings: DeliverySettings,
        js: JetStreamContext,
        engine: AsyncEngine,
        *,
        resolver: Resolver | None = None,
        routing: Callable[[], RoutingSnapshot] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = SessionPool(
            cache_time_limit=settings.smtp_connection_cache_time_limit,
            reuse_time_limit=settings.smtp_connection_reuse_time_limit,
            reuse_count_limit=settings.smtp_connection_reuse_count_limit,
            quit_timeout=min(settings.smtp_quit_timeout, 5.0),
        )
        # The routing snapshot in force (smtp_tls_policy_maps); Postfix's
        # defaults when none is followed.
        transports = build_transports(settings.served_transports(), settings, self.pool,
                                      resolver, routing)
        self.transports = transports
        store = MessageStore(engine, with_origin=settings.smtp_send_xforward_command)
        runner = JobRunner(js, store, transports, settings)
        slots = Slots(settings.default_process_limit)
        self.consumers = [
            JobConsumer(name, runner, slots, settings) for name in transports
        ]
        self.ready = False

    async def start(self) -> None:
        """Create the consumers (idempotent) and start fetching."""
        for consumer in self.consumers:
            await consumer.setup()
        for consumer in self.consumers:
            consumer.start()
        self.ready = True
        log.info("delivering for %s", ", ".join(c.transport for c in self.consumers))

    async def drain(self, timeout: float) -> None:
        """Stop fetching; let jobs in hand finish for at most ``timeout`` seconds.
        Jobs still running then are cancelled unacknowledged (redelivered)."""
        self.ready = False
        deadline = time.monotonic() + timeout
        for consumer in self.consumers:
            consumer.stop()
        loops = [asyncio.ensure_future(c.wait_stopped()) for c in self.consumers]
        await asyncio.wait(loops, timeout=max(0.0, deadline - time.monotonic()))
        jobs = {t for c in self.consumers for t in c.tasks}
        if jobs:
            log.info("draining %d jobs in flight", len(jobs))
            _done, pending = await asyncio.wait(
                jobs, timeout=max(0.0, deadline - time.monotonic())
            )
            for task in pending:
                task.cancel()
            if pending:
                log.warning("%d jobs abandoned at shutdown; they will be redelivered",
                            len(pending))
                await asyncio.wait(pending, timeout=1.0)
        for loop_task in loops:
            loop_task.cancel()
        await self.pool.close()
        for transport in {id(t): t for t in self.transports.values()}.values():
            if isinstance(transport, SmtpTransport):
                await transport.close()
