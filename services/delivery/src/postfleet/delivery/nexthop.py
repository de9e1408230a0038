"""Next-hop syntax of the smtp transport, as in Postfix's transport(5).

    [host]:port   [host]     literal host: no MX lookup, A/AAAA only
    host:port     host       a domain: MX lookup first (by the resolver)
    [2001:db8::1]:25, [ipv6:2001:db8::1]   IPv6 literals

The port is a number or a service name ("smtp", "submission"); the default is
25 (Postfix's smtp_tcp_port). Postfix parameters: smtp_tcp_port.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import lru_cache

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
