"""ingress-smtp (Postfix smtpd) wiring: the cleanup channel, the listeners,
the fleet's anvil on the bus, ETRN's way to qmgr's flush service (a bus
request, ``subjects.FLUSH_SITE``), health and drain on the shared runtime
(bus and routing view; smtpd never touches the queue store). Nothing else
lives here."""

from __future__ import annotations

import grpc
from nats.aio.client import Client

from postfleet.core.bus import subjects
from postfleet.core.runtime import role_runtime, run_role
from postfleet.core.service import Service
from postfleet.ingress_smtp.anvil import FleetAnvil
from postfleet.ingress_smtp.listeners import Listeners
from postfleet.ingress_smtp.protocol import FlushSite
from postfleet.ingress_smtp.settings import IngressSettings
from postfleet.ingress_smtp.submit import CleanupClient

ROLE = "ingress-smtp"
# How long ETRN waits for qmgr's answer before saying 458.
FLUSH_TIMEOUT_S = 10.0


def flush_requester(nc: Client) -> FlushSite:
    """ETRN's flush_site: ask a qmgr to flush the site's deferred mail."""

    async def flush_site(site: str) -> bool | None:
        try:
            answer = await nc.request(subjects.FLUSH_SITE, site.encode(),
                                      timeout=FLUSH_TIMEOUT_S)
        except Exception:  # no qmgr answered (none running, the bus away)
            return None
        return {b"ok": True, b"deny": False}.get(answer.data)

    return flush_site


# gRPC waits 1 s, then up to 120 s, before it reconnects to a cleanup that
# went away; a restarted cleanup is back in well under a second, and smtpd's
# resend of a lost answer waits for it. Reconnecting to a local cleanup is
# cheap, so try again soon and often.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


async def run(settings: IngressSettings) -> None:
    async with role_runtime(ROLE, settings, database=False, routing=True) as rt:
        channel = grpc.aio.insecure_channel(settings.cleanup_address, options=CHANNEL_OPTIONS)
        try:
            anvil = await FleetAnvil(rt.js, settings.anvil_rate_time_unit).start()
            try:
                async with Service(ROLE, settings, drain_timeout=settings.drain_timeout) as service:
                    cleanup = CleanupClient(channel, settings.cleanup_timeout)
                    listeners = Listeners(settings, rt.routes(), cleanup, anvil,
                                          flush_requester(rt.nc))
                    await listeners.start()
                    service.set_ready(True)
                    await service.stopping.wait()
                    service.set_ready(False)
                    await listeners.drain(settings.drain_timeout)
            finally:
                await anvil.stop()
        finally:
            await channel.close()


def main() -> None:
    run_role(ROLE, IngressSettings, run)
