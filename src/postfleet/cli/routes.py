"""``postfleet routes load`` and ``postfleet route``: the routing snapshot
from a config file into NATS KV, and what it decides for an address
(like ``postmap -q`` / ``sendmail -bv``)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from postfleet.core.routing.resolver import resolve
from postfleet.core.routing.snapshot import RoutingSnapshot


def snapshot_from_config(cfg: dict[str, Any]) -> RoutingSnapshot:
    """The ``routing:`` block, with myhostname taken from the file or env."""
    myhostname = (os.environ.get("POSTFLEET_MYHOSTNAME") or cfg.get("myhostname")
                  or socket.getfqdn())
    routing = dict(cfg.get("routing") or {})
    routing.setdefault("myhostname", myhostname)
    return RoutingSnapshot.from_config(routing)


async def publish_config_routes(nats_url: str, cfg: dict[str, Any]) -> int:
    from postfleet.core.bus.connect import connect, ensure_bus
    from postfleet.core.routing.store import publish_snapshot

    snapshot = snapshot_from_config(cfg)
    nc = await connect(nats_url, "postfleet-cli")
    try:
        js = await ensure_bus(nc)
        stored = await publish_snapshot(js, snapshot)
    finally:
        await nc.close()
    return stored.version


def describe(snapshot: RoutingSnapshot, address: str) -> dict[str, Any]:
    route = resolve(snapshot, address)
    nexthop = route.nexthop
    mx = not nexthop.startswith("[")
    host, port = nexthop, None
    if nexthop.startswith("["):
        host, _, rest = nexthop[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif nexthop.count(":") == 1:
        host, _, p = nexthop.partition(":")
        port = int(p) if p.isdigit() else None
    return {"address": address, "class": route.address_class.value, "transport":
            route.transport, "nexthop": host, "port": port, "mx": mx}


def format_route(info: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(info)
    port = f":{info['port']}" if info["port"] else ""
    lookup = "MX lookup" if info["mx"] else "no MX lookup"
    return (f"{info['address']}: class={info['class']} transport={info['transport']} "
            f"nexthop={info['nexthop']}{port} ({lookup})")
