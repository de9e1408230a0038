"""What a (transport, nexthop) pair means for the delivery agent: the host,
the port, and whether an MX lookup happens -- for ``postfleet route``.

Postfix parameters: disable_dns_lookups, smtp_dns_support_level (an MX lookup
needs DNS support).

Transports are classified by their Postfix master.cf service names: smtp and
relay are the smtp(8) client (and so is any name postfleet does not know);
lmtp is lmtp(8), which never looks up MX records; local, virtual, error,
discard and retry deliver without a host. SMTP destinations (smtp(8)
"DESTINATION SYNTAX"): ``domain``, ``domain:port``, ``[host]``,
``[host]:port`` (brackets: no MX lookup), ``inet:`` prefixes allowed; with
several destinations (Postfix 3.5+) the first is described.
"""

from __future__ import annotations

from dataclasses import dataclass

SMTP_CLIENTS = frozenset({"smtp", "relay"})
LMTP_CLIENTS = frozenset({"lmtp"})
NO_HOST_TRANSPORTS = frozenset({"local", "virtual", "error", "discard", "retry", "pipe"})


@dataclass(frozen=True)
class NexthopView:
    host: str
    port: int | None
    mx: bool


def _host_port(text: str) -> tuple[str, int | None, bool]:
    """(host, port, bracketed) of ``[host]:port`` / ``host:port`` / ``host``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return host, port, True
    host, sep, port_text = text.rpartition(":")
    if sep and port_text.isdigit() and ":" not in host:
        return host, int(port_text), False
    return text, None, False


def describe_nexthop(transport: str, nexthop: str, *, dns_lookups: bool = True) -> NexthopView:
    if transport in NO_HOST_TRANSPORTS:
        return NexthopView(nexthop, None, False)
    text = nexthop.replace(",", " ").split()[0] if nexthop.strip() else ""
    if text.startswith("inet:"):
        text = text[5:]
    elif text.startswith("unix:"):
        return NexthopView(text, None, False)
    host, port, bracketed = _host_port(text)
    smtp = transport not in LMTP_CLIENTS
    return NexthopView(host, port, smtp and dns_lookups and not bracketed and bool(host))
