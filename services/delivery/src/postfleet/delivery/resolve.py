"""From a nexthop to the addresses the smtp client tries, in order.

The seam for DNS: ``Resolver`` is what the smtp transport calls. Today's
``HostResolver`` looks up the host's own addresses (A/AAAA through the
system resolver) for both ``[host]`` and ``host``; the MX lookup that
Postfix does for a plain ``host`` (smtp_host_lookup=dns) is a later resolver
that returns MX hosts' addresses in preference order through the same
interface.

Failures carry Postfix's texts and status codes: an unknown host is 5.4.4
(bounced), a name service failure 4.4.3 (deferred).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Protocol

from postfleet.delivery.nexthop import Nexthop


@dataclass(frozen=True, slots=True)
class Address:
    """One SMTP server to try: the name it was found under and its IP."""

    hostname: str
    ip: str
    port: int
    family: int = socket.AF_INET

    @property
    def label(self) -> str:
        """``host[ip]``, as Postfix names a server in its replies."""
        return f"{self.hostname}[{self.ip}]"

    @property
    def relay(self) -> str:
        """``host[ip]:port``, the ``relay=`` of Postfix's log line."""
        return f"{self.label}:{self.port}"


class ResolveError(Exception):
    """No address for the nexthop; ``dsn`` says whether to retry (4.x.x)."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text


class Resolver(Protocol):
    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        """Addresses in the order to try them; raises ResolveError."""
        ...


_PERMANENT_EAI = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class HostResolver:
    """A/AAAA lookups of the nexthop host itself (no MX yet)."""

    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        host = nexthop.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            return [Address(host, str(ip), nexthop.port, family)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, nexthop.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            if exc.errno in _PERMANENT_EAI:
                raise ResolveError(
                    "5.4.4",
                    "Host or domain name not found. "
                    f"Name service error for name={host} type=A: Host not found",
                ) from None
            raise ResolveError(
                "4.4.3",
                "Host or domain name not found. "
                f"Name service error for name={host} type=A: Host not found, try again",
            ) from None
        seen: set[str] = set()
        out: list[Address] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            addr = str(sockaddr[0])
            if addr not in seen:
                seen.add(addr)
                out.append(Address(host, addr, nexthop.port, family))
        if not out:
            raise ResolveError(
                "5.4.4",
                f"Host or domain name not found. Name service error for name={host} "
                "type=A: Host not found",
            )
        return out
