"""delivery's wiring: settings, database, bus, consumers, lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postfleet.core.bus.connect import connect, ensure_streams
from postfleet.core.db.engine import create_engine
from postfleet.core.db.migrate import upgrade
from postfleet.core.logs import setup_logging
from postfleet.core.service import Service
from postfleet.delivery.agent import DeliveryAgent
from postfleet.delivery.settings import DeliverySettings

log = logging.getLogger("postfleet.delivery")


async def run(settings: DeliverySettings) -> None:
    # Like every role, bring the schema up to date so a lone role can start
    # on an empty database; delivery itself only reads.
    migrator = create_engine(settings.database_url)
    try:
        await upgrade(migrator)
    finally:
        await migrator.dispose()
    engine = create_engine(
        settings.database_url, writer=False, pool_size=settings.delivery_db_pool_size
    )
    nc = await connect(settings.nats_url, "delivery")
    js = nc.jetstream()
    try:
        async with Service("delivery", settings) as svc:
            svc.add_check("nats", lambda: nc.is_connected)
            await ensure_streams(js)
            agent = DeliveryAgent(settings, js, engine)
            await agent.start()
            svc.set_ready(True)
            await svc.stopping.wait()
            svc.set_ready(False)
            await agent.drain(settings.delivery_drain_timeout)
    finally:
        # Flush the last acks out, then close (a drain would wait on the
        # pull subscriptions' inboxes).
        with contextlib.suppress(Exception):
            await nc.flush(timeout=5)
        with contextlib.suppress(Exception):
            await nc.close()
        await engine.dispose()


def main() -> None:
    settings = DeliverySettings()
    setup_logging("delivery", settings.log_format, settings.log_level)
    asyncio.run(run(settings))
