"""What a (transport, nexthop) pair means for the delivery agent: the host,
the port, and whether an MX lookup happens -- for ``postfleet route``.

Postfix parameters: disable_dns_lookups, smtp_dns_support_level (an MX lookup
needs DNS support).

``parse_nexthop`` is the one parser of this syntax: the delivery agents
connect with it and ``postfleet route`` describes with it. Postfix
parameters: smtp_tcp_port (the default port, 25).

Transports are classified by their Postfix master.cf service names: smtp and
relay are the smtp(8) client (and so is any name postfleet does not know);
lmtp is lmtp(8), which never looks up MX records; local, virtual, error,
discard and retry deliver without a host. SMTP destinations (smtp(8)
"DESTINATION SYNTAX"): ``domain``, ``domain:port``, ``[host]``,
``[host]:port`` (brackets: no MX lookup), ``inet:`` prefixes allowed; with
several destinations (Postfix 3.5+) the first is described.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import lru_cache

SMTP_CLIENTS = frozenset({"smtp", "relay"})
LMTP_CLIENTS = frozenset({"lmtp"})
NO_HOST_TRANSPORTS = frozenset({"local", "virtual", "error", "discard", "retry", "pipe"})


SMTP_PORT = 25


class NexthopError(ValueError):
    """The nexthop is not valid syntax: a configuration error, not a remote one."""


@dataclass(frozen=True, slots=True)
class Nexthop:
    host: str
    port: int
    # True for "[host]": connect to the host's own addresses, skip MX lookup.
    literal: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.literal else self.host
        return f"{host}:{self.port}"


def _port(text: str, nexthop: str) -> int:
    if text.isdigit():
        port = int(text)
        if 0 < port < 65536:
            return port
        raise NexthopError(f"bad port in nexthop {nexthop!r}")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise NexthopError(f"unknown service {text!r} in nexthop {nexthop!r}") from None


@lru_cache(maxsize=4096)
def parse_nexthop(text: str, default_port: int = SMTP_PORT) -> Nexthop:
    """Parse ``[host]:port``, ``[host]``, ``host:port`` or ``host``."""
    value = text.strip()
    if not value:
        raise NexthopError("empty nexthop")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise NexthopError(f"missing ']' in nexthop {text!r}")
        host = value[1:end].strip()
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        rest = value[end + 1:]
        if rest and not rest.startswith(":"):
            raise NexthopError(f"garbage after ']' in nexthop {text!r}")
        port = _port(rest[1:], text) if rest else default_port
        literal = True
    else:
        host, sep, port_text = value.partition(":")
        if ":" in port_text:
            raise NexthopError(f"IPv6 address must be in [brackets] in nexthop {text!r}")
        port = _port(port_text, text) if sep else default_port
        literal = False
    if not host or any(c.isspace() for c in host):
        raise NexthopError(f"bad host in nexthop {text!r}")
    return Nexthop(host=host, port=port, literal=literal)


@dataclass(frozen=True)
class NexthopView:
    host: str
    port: int | None
    mx: bool


def _host_port(text: str) -> tuple[str, int | None, bool]:
    """(host, port or None, bracketed) of ``[host]:port`` / ``host:port`` / ``host``."""
    try:
        hop = parse_nexthop(text, default_port=0)
    except NexthopError:
        return text, None, False
    return hop.host, hop.port or None, hop.literal


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
