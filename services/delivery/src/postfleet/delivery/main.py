"""delivery's wiring: one job consumer per transport on the shared runtime
(the queue store, read only, and the bus)."""

from __future__ import annotations

from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service
from postfleet.delivery.agent import DeliveryAgent
from postfleet.delivery.settings import DeliverySettings


async def run(settings: DeliverySettings) -> None:
    # Delivery only reads the queue store: no write lock on SQLite.
    # The routing view: smtp_tls_policy_maps (Transport resources' spec.tls).
    async with role_runtime("delivery", settings, writer=False, routing=True,
                            pool_size=settings.delivery_db_pool_size) as rt:
        async with Service("delivery", settings,
                           drain_timeout=settings.delivery_drain_timeout) as svc:
            svc.add_check("nats", lambda: rt.nc.is_connected)
            view = rt.routes()
            agent = DeliveryAgent(settings, rt.js, rt.db(), routing=lambda: view.snapshot)
            await agent.start()
            svc.set_ready(True)
            await svc.stopping.wait()
            svc.set_ready(False)
            await agent.drain(settings.delivery_drain_timeout)


def main() -> None:
    run_role("delivery", DeliverySettings, run)
