"""ingress-smtp: the client's verified name (Postfix smtpd's peer name lookup).

Postfix looks the client's address up in reverse, then looks that name up
forward; the name counts only when one of its addresses is the client's
(forward-confirmed reverse DNS). Anything else -- no PTR record, a name that
does not resolve back, a time-out -- leaves the client "unknown".

Where the answers come from is ``dns_nameservers``: empty (the default) is
the system resolver, as in Postfix (getnameinfo() and getaddrinfo(), so
/etc/hosts and /etc/resolv.conf); a list of servers means dnspython asking
exactly those (PTR, then A or AAAA for the client's address family).

Postfix parameters: smtpd_peername_lookup (whether the session asks at all,
see session.py). postfleet's own: dns_nameservers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.reversename

from postfleet.core.nameservers import dns_client
from postfleet.ingress_smtp.restrictions import normalize_ip

UNKNOWN = "unknown"
NAME_LOOKUP_TIMEOUT = 5.0

# ip -> its verified name, or "unknown"
NameLookup = Callable[[str], Coroutine[Any, Any, str]]


async def system_client_name(ip: str) -> str:
    """The forward-confirmed reverse name of ``ip`` from the system resolver."""
    if not ip:
        return UNKNOWN
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(NAME_LOOKUP_TIMEOUT):
            name, _ = await loop.getnameinfo((ip, 0), socket.NI_NAMEREQD)
            infos = await loop.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, TimeoutError, UnicodeError):
        return UNKNOWN
    if any(normalize_ip(str(info[4][0])) == ip for info in infos):
        return name
    return UNKNOWN


class DnsClientNames:
    """The forward-confirmed reverse name of an address, from the given DNS servers."""

    def __init__(self, client: dns.asyncresolver.Resolver) -> None:
        self.client = client

    async def __call__(self, ip: str) -> str:
        if not ip:
            return UNKNOWN
        try:
            address = ipaddress.ip_address(ip)
            async with asyncio.timeout(NAME_LOOKUP_TIMEOUT):
                answer = await self.client.resolve(
                    dns.reversename.from_address(ip), "PTR", search=False)
                name = answer[0].target.to_text(omit_final_dot=True)
                forward = await self.client.resolve(
                    name, "A" if address.version == 4 else "AAAA", search=False)
        except (dns.exception.DNSException, OSError, TimeoutError, ValueError):
            return UNKNOWN
        if any(normalize_ip(record.address) == ip for record in forward):
            return name
        return UNKNOWN


def client_name_lookup(nameservers: Sequence[str]) -> NameLookup:
    """dns_nameservers -> the lookup the sessions use; sends nothing yet."""
    if not nameservers:
        return system_client_name
    return DnsClientNames(dns_client(nameservers, NAME_LOOKUP_TIMEOUT))
