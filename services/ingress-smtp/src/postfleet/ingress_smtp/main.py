"""ingress-smtp (Postfix smtpd) wiring: settings, logging, NATS routing view,
the cleanup channel, the listeners, health, drain. Nothing else lives here."""

from __future__ import annotations

import asyncio

import grpc

from postfleet.core.bus.connect import connect, ensure_bus
from postfleet.core.logs import setup_logging
from postfleet.core.routing.store import RoutingView
from postfleet.core.service import Service
from postfleet.ingress_smtp.listeners import Listeners
from postfleet.ingress_smtp.settings import IngressSettings
from postfleet.ingress_smtp.submit import CleanupClient

ROLE = "ingress-smtp"


async def run(settings: IngressSettings) -> None:
    nc = await connect(settings.nats_url, ROLE)
    routing = RoutingView()
    channel = grpc.aio.insecure_channel(settings.cleanup_address)
    try:
        await routing.start(await ensure_bus(nc))
        async with Service(ROLE, settings) as service:
            cleanup = CleanupClient(channel, settings.cleanup_timeout)
            listeners = Listeners(settings, routing, cleanup)
            await listeners.start()
            service.set_ready(True)
            await service.stopping.wait()
            service.set_ready(False)
            await listeners.drain(settings.drain_timeout)
    finally:
        await routing.stop()
        await channel.close()
        await nc.close()


def main() -> None:
    settings = IngressSettings()
    setup_logging(ROLE, settings.log_format, settings.log_level)
    asyncio.run(run(settings))
