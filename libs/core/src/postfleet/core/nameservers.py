"""The DNS servers a role asks, when it is told which: ``dns_nameservers``.

Postfix leaves the choice of resolver to the operating system
(/etc/resolv.conf); postfleet's roles do too by default, and take an explicit
list where a deployment (or a test's loopback dnsmasq) wants other servers.
Each entry is ``ip``, ``ip:port`` or ``[ip6]:port`` (a bare IPv6 address
means port 53); a name server is an address, never a name.

``dns_client`` builds a dnspython resolver on such a list; ``blocking_dns_client``
builds the same for libraries that only ask synchronously (dkimpy, pyspf,
run in a worker thread), and takes an empty list as "the system's resolver",
as the roles' own lookups do. Neither reads a file nor sends anything until
its first query.

Postfix parameters: none (postfleet's own: dns_nameservers).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.nameserver
import dns.resolver

DNS_PORT = 53
# One try's limit; the lifetime passed to dns_client bounds all the retries.
TRY_SECONDS = 3.0


def parse_nameserver(text: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[ip6]:port`` or a bare IPv6 address -> (ip, port)."""
    value = text.strip()
    port = DNS_PORT
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad name server {text!r}: expected [ip6]:port")
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = int(port_text)
    else:
        host = value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"name server {text!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"bad port in name server {text!r}")
    return host, port


def check_nameservers(values: Sequence[str]) -> list[str]:
    """A settings validator: every entry parses (the error names the bad one)."""
    for value in values:
        parse_nameserver(value)
    return list(values)


def _configure(client: dns.resolver.BaseResolver, nameservers: Sequence[str],
               lifetime: float) -> None:
    client.nameservers = [
        dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
    ]
    client.lifetime = lifetime
    client.timeout = min(lifetime, TRY_SECONDS)
    client.cache = dns.resolver.LRUCache(4096)  # honours each record's TTL


def dns_client(nameservers: Sequence[str], lifetime: float) -> dns.asyncresolver.Resolver:
    """A dnspython resolver that asks these servers and nothing else (no
    /etc/resolv.conf, no search list); one lookup takes ``lifetime`` at most."""
    if not nameservers:
        raise ValueError("dns_client needs at least one name server")
    client = dns.asyncresolver.Resolver(configure=False)
    _configure(client, nameservers, lifetime)
    return client


def blocking_dns_client(nameservers: Sequence[str], lifetime: float) -> dns.resolver.Resolver:
    """A synchronous resolver on these servers; none: the system's
    (/etc/resolv.conf), as Postfix leaves it to the operating system."""
    if not nameservers:
        try:
            system = dns.resolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            system = dns.resolver.Resolver(configure=False)  # every query fails: temporary
        system.lifetime = lifetime
        return system
    client = dns.resolver.Resolver(configure=False)
    _configure(client, nameservers, lifetime)
    return client
