"""smtpd under uvloop, as the role runs: hanging up closes the connection
and a drain ends at once for a client that has gone quiet. uvloop's
transports are not asyncio's transport classes, so nothing may depend on
isinstance checks against those."""

from __future__ import annotations

import asyncio

import grpc
import uvloop

from postfleet.core.routing.store import RoutingView
from postfleet.ingress_smtp.listeners import Listeners
from postfleet.ingress_smtp.settings import IngressSettings, Listener
from postfleet.ingress_smtp.submit import CleanupClient


async def _greeted_then_quiet_client_is_drained() -> None:
    settings = IngressSettings(
        listeners=[Listener(name="smtp", address="127.0.0.1", port=0)],
        myhostname="mx.uvloop.test", smtpd_peername_lookup=False)
    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    listeners = Listeners(settings, RoutingView(), CleanupClient(channel, 5))
    await listeners.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", listeners.ports["smtp"])
    assert (await reader.readline()).startswith(b"220 ")
    # The drain's own deadline is an hour: only hanging up ends it in time.
    await asyncio.wait_for(listeners.drain(3600), 10)
    assert (await reader.readline()).startswith(b"421 4.3.2 mx.uvloop.test ")
    assert await reader.read() == b""  # the server closed the connection
    assert len(listeners.sessions) == 0
    writer.close()
    await channel.close()


def test_an_idle_session_is_hung_up_at_once_on_uvloop() -> None:
    uvloop.run(_greeted_then_quiet_client_is_drained())
