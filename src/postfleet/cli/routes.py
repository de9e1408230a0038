"""``postfleet routes load`` and ``postfleet route``: the routing snapshot
from a config file into NATS KV, and what it decides for an address
(like ``postmap -q`` / ``sendmail -bv``).

``postfleet route`` answers per address: its address class, the addresses it
finally goes to (canonical, virtual alias and alias rewriting), the
transport and next hop (host, port, whether an MX lookup happens) when there
is exactly one, and the reply an outside client -- not in mynetworks, not
authenticated -- gets at RCPT time, computed by the same code ingress-smtp
runs.

Postfix parameters read from the config file besides the ``routing:`` block:
myhostname, smtpd_relay_restrictions, smtpd_recipient_restrictions,
smtpd_reject_unlisted_recipient (top level or ``ingress_smtp:``),
disable_dns_lookups, smtp_dns_support_level (top level or ``delivery:``).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from postfleet.core.routing.nexthop import describe_nexthop
from postfleet.core.routing.rcpt_checks import (
    DEFAULT_RELAY_RESTRICTIONS,
    check_recipient,
    outside_client,
)
from postfleet.core.routing.resolver import resolve
from postfleet.core.routing.rewrite import (
    AliasExpansionError,
    final_recipients,
    is_special_target,
)
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.trivial_rewrite import rewrite_local


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


def _setting(cfg: dict[str, Any], section: str, name: str, default: Any) -> Any:
    """A role's view of a parameter: its own section over the top level."""
    own = cfg.get(section)
    if isinstance(own, dict) and name in own:
        return own[name]
    return cfg.get(name, default)


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return [str(v) for v in value or []]


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("yes", "true", "1", "on")
    return bool(value)


@dataclass
class RouteContext:
    """Everything ``postfleet route`` needs besides the address."""

    snapshot: RoutingSnapshot
    dns_lookups: bool = True
    relay_restrictions: list[str] = field(
        default_factory=lambda: list(DEFAULT_RELAY_RESTRICTIONS))
    recipient_restrictions: list[str] = field(default_factory=list)
    reject_unlisted_recipient: bool = True


def route_context(cfg: dict[str, Any]) -> RouteContext:
    level = str(_setting(cfg, "delivery", "smtp_dns_support_level", "") or "").lower()
    if level:
        dns = level != "disabled"
    else:
        dns = not _as_bool(_setting(cfg, "delivery", "disable_dns_lookups", False))
    return RouteContext(
        snapshot=snapshot_from_config(cfg),
        dns_lookups=dns,
        relay_restrictions=[r.lower() for r in _as_list(_setting(
            cfg, "ingress_smtp", "smtpd_relay_restrictions", list(DEFAULT_RELAY_RESTRICTIONS)))],
        recipient_restrictions=[r.lower() for r in _as_list(_setting(
            cfg, "ingress_smtp", "smtpd_recipient_restrictions", []))],
        reject_unlisted_recipient=_as_bool(_setting(
            cfg, "ingress_smtp", "smtpd_reject_unlisted_recipient", True)),
    )


def describe(ctx: RouteContext | RoutingSnapshot, address: str) -> dict[str, Any]:
    """One address's routing decision, with the keys of ``route --json``."""
    if isinstance(ctx, RoutingSnapshot):
        ctx = RouteContext(ctx)
    snapshot = ctx.snapshot
    canonical = rewrite_local(snapshot, address)
    notes: list[str] = []
    try:
        rewritten = final_recipients(snapshot, address)
    except AliasExpansionError as exc:
        rewritten = [canonical]
        notes.append(f"{exc.reply} ({exc.detail}): cleanup would not accept this message")
    refusal = check_recipient(
        snapshot, outside_client(snapshot), address,
        relay_restrictions=ctx.relay_restrictions,
        recipient_restrictions=ctx.recipient_restrictions,
        reject_unlisted_recipient=ctx.reject_unlisted_recipient,
    )
    info: dict[str, Any] = {
        "address": address,
        "class": resolve(snapshot, address).address_class.value,
        "rewritten": rewritten,
        "transport": None, "nexthop": None, "port": None, "mx": None,
        "reject": str(refusal) if refusal is not None else None,
    }
    if len(rewritten) == 1:
        final = rewritten[0]
        if is_special_target(final):  # delivered by local(8) itself
            transport, nexthop = "local", snapshot.expand(snapshot.myhostname)
        else:
            route = resolve(snapshot, final)
            transport, nexthop = route.transport, route.nexthop
        view = describe_nexthop(transport, nexthop, dns_lookups=ctx.dns_lookups)
        info.update(transport=transport, nexthop=view.host, port=view.port, mx=view.mx)
    if notes:
        info["_notes"] = notes
    return info


def format_route(info: dict[str, Any], as_json: bool) -> str:
    public = {k: v for k, v in info.items() if not k.startswith("_")}
    if as_json:
        return json.dumps(public)
    lines = [f"{info['address']}: class={info['class']}"]
    if info["rewritten"] != [info["address"]]:
        lines.append(f"  rewritten to {', '.join(info['rewritten'])}")
    if info["transport"] is not None:
        port = f":{info['port']}" if info["port"] else ""
        lookup = "MX lookup" if info["mx"] else "no MX lookup"
        lines.append(f"  transport={info['transport']} nexthop={info['nexthop']}{port} "
                     f"({lookup})")
    if info["reject"]:
        lines.append(f"  RCPT from an outside client: {info['reject']}")
    lines.extend(f"  note: {n}" for n in info.get("_notes", []))
    return "\n".join(lines)
