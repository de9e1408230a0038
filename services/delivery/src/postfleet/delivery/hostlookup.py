"""Host lookup for the smtp and lmtp clients: from a nexthop to the
addresses to try, in order (Postfix's smtp_addr.c). Routing's resolver
(postfleet.core.routing.resolver) comes before it and picks the
transport:nexthop; this module only finds that nexthop's servers.

The seam for DNS: ``Resolver`` is what the transports call.

``HostResolver`` is Postfix's "native" lookup: getaddrinfo(), which reads
/etc/hosts and the system resolver. ``DnsResolver`` is smtp(8) with DNS on
(smtp_dns_support_level = enabled, the default):

- ``[host]`` (a literal nexthop, and every lmtp nexthop): the host's own
  A/AAAA records, no MX lookup. An IP address, bracketed or not, is used as
  it is (Postfix would refuse a bare one as a malformed domain name).
- ``domain``: its MX records, by preference, shuffled within one preference
  (smtp_randomize_addresses); no MX record: the domain's own A/AAAA records;
  a null MX (RFC 7505): bounced 5.1.10. MX hosts at or below this host's own
  preference are dropped; when this host is the best MX the mail "loops back
  to myself" (5.4.6). A host is this host when it is named myhostname or has
  an address in proxy_interfaces.
- at most smtp_mx_address_limit addresses in all.
- host addresses come from DNS, getaddrinfo or DNS then getaddrinfo
  (smtp_host_lookup = dns / native / dns, native).

With DNS disabled (smtp_dns_support_level = disabled, or disable_dns_lookups
= yes) there is no MX lookup and every host is looked up natively (and no
MTA-STS, whose TXT records ``DnsResolver.txt`` asks for).

Failures carry Postfix's texts: a name that does not exist is bounced 5.4.4
("Host or domain name not found. Name service error for name=… type=MX: Host
not found"); a DNS timeout or server failure is deferred 4.4.3 ("…: Host not
found, try again").

Postfix parameters: smtp_dns_support_level, disable_dns_lookups,
smtp_host_lookup, smtp_mx_address_limit, smtp_randomize_addresses,
smtp_address_preference, inet_protocols, proxy_interfaces, myhostname.
postfleet's own: dns_nameservers, dns_timeout.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from postfleet.core.routing.nexthop import Nexthop
from postfleet.delivery.settings import DeliverySettings

NOT_FOUND = "Host or domain name not found. Name service error for name={name} type={type}: "
HOST_NOT_FOUND = NOT_FOUND + "Host not found"
NO_DATA = NOT_FOUND + "Host found but no data record of requested type"
TRY_AGAIN = NOT_FOUND + "Host not found, try again"
LOOPS_BACK = "mail for {name} loops back to myself"
NULL_MX = "Domain {name} does not accept mail (nullMX)"


# The family of a UNIX-domain socket address (lmtp's unix:/path); -1 where
# the platform has none.
AF_UNIX: int = getattr(socket, "AF_UNIX", -1)


@dataclass(frozen=True, slots=True)
class Address:
    """One server to try: the name it was found under and its IP (or, for a
    UNIX-domain socket, its path in ``ip`` and ``family`` AF_UNIX)."""

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
        """``host[ip]:port`` (``host[path]`` for a socket), the log's ``relay=``."""
        if self.family == AF_UNIX:
            return self.label
        return f"{self.label}:{self.port}"


class ResolveError(Exception):
    """No address for the nexthop; ``dsn`` says whether to retry (4.x.x)."""

    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text

    @property
    def temporary(self) -> bool:
        return self.dsn.startswith("4")


class Resolver(Protocol):
    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        """Addresses in the order to try them; raises ResolveError."""
        ...


def _literal(host: str, port: int) -> Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return Address(host, str(ip), port, family)


_PERMANENT_EAI = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


class HostResolver:
    """Postfix's "native" host lookup: getaddrinfo() (files, then the system DNS)."""

    def __init__(self, families: Iterable[int] = (socket.AF_INET, socket.AF_INET6)) -> None:
        self.families = frozenset(families)

    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        return await self.lookup(nexthop.host, nexthop.port)

    async def lookup(self, host: str, port: int) -> list[Address]:
        literal = _literal(host, port)
        if literal is not None:
            return [literal]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            if exc.errno in _PERMANENT_EAI:
                raise ResolveError("5.4.4", HOST_NOT_FOUND.format(name=host, type="A")) from None
            raise ResolveError("4.4.3", TRY_AGAIN.format(name=host, type="A")) from None
        seen: set[str] = set()
        out: list[Address] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            addr = str(sockaddr[0])
            if family in self.families and addr not in seen:
                seen.add(addr)
                out.append(Address(host, addr, port, family))
        if not out:
            raise ResolveError("5.4.4", HOST_NOT_FOUND.format(name=host, type="A"))
        return out


def parse_nameserver(text: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[ip6]:port`` or a bare IPv6 address."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = int(port_text)
    else:
        host, port = value, 53
    ipaddress.ip_address(host)  # a name server is an address, never a name
    if not 0 < port < 65536:
        raise ValueError(f"bad port in name server {text!r}")
    return host, port


def make_dns_client(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    """A dnspython resolver on the given servers, or on /etc/resolv.conf when
    none are given. Reads files only; nothing is sent until the first query."""
    if nameservers:
        client = dns.asyncresolver.Resolver(configure=False)
        client.nameservers = [
            dns.nameserver.Do53Nameserver(*parse_nameserver(ns)) for ns in nameservers
        ]
    else:
        try:
            client = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration:
            raise ValueError(
                "no name servers in /etc/resolv.conf: set dns_nameservers, or "
                "smtp_dns_support_level = disabled for getaddrinfo() lookups only"
            ) from None
    client.lifetime = timeout
    client.timeout = min(timeout, 3.0)  # per try; the lifetime bounds the retries
    client.cache = dns.resolver.LRUCache(4096)  # honours each record's TTL
    return client


class _Lookup(Exception):
    """One DNS query's failure: no such name, no such record, or try again."""

    def __init__(self, kind: str, name: str, rdtype: str) -> None:
        super().__init__(kind)
        self.kind = kind  # "nxdomain", "nodata", "again"
        self.name = name
        self.rdtype = rdtype

    def error(self) -> ResolveError:
        if self.kind == "again":
            return ResolveError("4.4.3", TRY_AGAIN.format(name=self.name, type=self.rdtype))
        text = HOST_NOT_FOUND if self.kind == "nxdomain" else NO_DATA
        return ResolveError("5.4.4", text.format(name=self.name, type=self.rdtype))


@dataclass(frozen=True, slots=True)
class DnsPolicy:
    """The smtp(8) parameters the DNS resolver follows."""

    host_lookup: tuple[str, ...] = ("dns",)  # "dns", "native" in order
    address_limit: int = 5  # smtp_mx_address_limit; 0: none
    randomize: bool = True  # smtp_randomize_addresses
    preference: str = "any"  # smtp_address_preference
    ipv4: bool = True  # inet_protocols
    ipv6: bool = True
    myhostname: str = ""
    self_addresses: frozenset[str] = frozenset()  # proxy_interfaces


class DnsResolver:
    """smtp(8) with DNS: MX lookups for domains, A/AAAA for hosts."""

    def __init__(
        self,
        client: dns.asyncresolver.Resolver,
        policy: DnsPolicy,
        native: HostResolver | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        families = [f for f, on in ((socket.AF_INET, policy.ipv4),
                                    (socket.AF_INET6, policy.ipv6)) if on]
        self.native = native or HostResolver(families)
        self.rng = rng or random.Random()

    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        literal = _literal(nexthop.host, nexthop.port)
        if literal is not None:  # an IP address: nothing to look up
            return [literal]
        host = nexthop.host.rstrip(".")
        if nexthop.literal:
            if self._is_me(host):
                raise ResolveError("5.4.6", LOOPS_BACK.format(name=f"[{host}]"))
            return self._limit(await self.host_addresses(host, nexthop.port))
        return self._limit(await self._mx_addresses(host, nexthop.port))

    def _limit(self, addresses: list[Address]) -> list[Address]:
        limit = self.policy.address_limit
        return addresses[:limit] if limit > 0 else addresses

    def _is_me(self, name: str) -> bool:
        me = self.policy.myhostname.rstrip(".").lower()
        return bool(me) and name.rstrip(".").lower() == me

    # -- MX --------------------------------------------------------------------

    async def _mx_addresses(self, domain: str, port: int) -> list[Address]:
        try:
            answer = await self._query(domain, "MX")
        except _Lookup as failure:
            if failure.kind != "nodata":
                raise failure.error() from None
            # No MX record: the domain is its own mail server (RFC 5321 5.1).
            return await self.host_addresses(domain, port)
        records: list[tuple[int, str]] = []
        for rdata in answer:
            exchange = rdata.exchange.to_text(omit_final_dot=True)
            records.append((int(rdata.preference), exchange))
        if len(records) == 1 and records[0][1] in ("", "."):
            raise ResolveError("5.1.10", NULL_MX.format(name=domain))
        records = [r for r in records if r[1] not in ("", ".")]
        records = self._order(records)

        # Every MX host's addresses, concurrently; a host is "me" by name or by
        # one of its addresses.
        looked_up = await asyncio.gather(
            *(self._host_or_failure(name, port) for _pref, name in records)
        )
        best_self: int | None = None
        for (pref, name), found in zip(records, looked_up, strict=True):
            me = self._is_me(name) or (
                isinstance(found, list)
                and any(a.ip in self.policy.self_addresses for a in found)
            )
            if me and (best_self is None or pref < best_self):
                best_self = pref
        addresses: list[Address] = []
        failures: list[ResolveError] = []
        for (pref, _name), found in zip(records, looked_up, strict=True):
            if best_self is not None and pref >= best_self:
                continue  # equal or worse than this host: it would relay to itself
            if isinstance(found, ResolveError):
                failures.append(found)
            else:
                addresses.extend(found)
        if addresses:
            return addresses
        if best_self is not None and not failures:
            raise ResolveError("5.4.6", LOOPS_BACK.format(name=domain))
        # No MX host has an address: retry if any lookup may succeed later.
        temporary = [f for f in failures if f.temporary]
        raise (temporary or failures)[0]

    def _order(self, records: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """By preference; equal preferences in random order (smtp_randomize_addresses)."""
        if self.policy.randomize:
            records = list(records)
            self.rng.shuffle(records)
            return sorted(records, key=lambda r: r[0])  # stable: keeps the shuffle
        return sorted(records)

    async def _host_or_failure(self, host: str, port: int) -> list[Address] | ResolveError:
        try:
            return await self.host_addresses(host, port)
        except ResolveError as exc:
            return exc

    # -- A / AAAA ----------------------------------------------------------------

    async def host_addresses(self, host: str, port: int) -> list[Address]:
        """A host's addresses by smtp_host_lookup ("dns", "native" or both)."""
        failure: ResolveError | None = None
        for method in self.policy.host_lookup:
            try:
                if method == "native":
                    return await self.native.lookup(host, port)
                return await self._dns_host(host, port)
            except ResolveError as exc:
                if failure is None or not failure.temporary:
                    failure = exc
                if exc.temporary:
                    break  # "dns, native": native only for hosts DNS does not know
        assert failure is not None
        raise failure

    async def _dns_host(self, host: str, port: int) -> list[Address]:
        wanted = [t for t, on in (("A", self.policy.ipv4), ("AAAA", self.policy.ipv6)) if on]
        results = await asyncio.gather(
            *(self._query(host, t) for t in wanted), return_exceptions=True
        )
        by_family: dict[int, list[Address]] = {}
        failures: list[_Lookup] = []
        for rdtype, result in zip(wanted, results, strict=True):
            if isinstance(result, _Lookup):
                failures.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                family = socket.AF_INET if rdtype == "A" else socket.AF_INET6
                by_family[family] = [Address(host, r.address, port, family) for r in result]
        if not by_family:
            # Postfix names the last type it asked for; "again" beats "not found".
            again = [f for f in failures if f.kind == "again"]
            nx = [f for f in failures if f.kind == "nxdomain"]
            raise (again or nx or failures)[-1].error()
        return self._families(by_family)

    def _families(self, by_family: dict[int, list[Address]]) -> list[Address]:
        v4 = by_family.get(socket.AF_INET, [])
        v6 = by_family.get(socket.AF_INET6, [])
        if self.policy.randomize:
            self.rng.shuffle(v4)
            self.rng.shuffle(v6)
        if self.policy.preference == "ipv4":
            return v4 + v6
        if self.policy.preference == "ipv6":
            return v6 + v4
        # "any": alternate the families (smtp_balance_inet_protocols), the
        # first one picked at random when randomising.
        first, second = (v6, v4) if self.policy.randomize and self.rng.random() < 0.5 else (
            v4, v6)
        out: list[Address] = []
        for i in range(max(len(first), len(second))):
            out.extend(x[i] for x in (first, second) if i < len(x))
        return out

    async def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each record's strings joined; [] when
        there are none; ResolveError (4.4.3) when DNS cannot tell."""
        try:
            answer = await self._query(name, "TXT")
        except _Lookup as failure:
            if failure.kind == "again":
                raise failure.error() from None
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            return await self.client.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise _Lookup("nxdomain", name, rdtype) from None
        except dns.resolver.NoAnswer:
            raise _Lookup("nodata", name, rdtype) from None
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
            raise _Lookup("nxdomain", name, rdtype) from None  # malformed: never exists
        except (dns.exception.DNSException, OSError):
            # Time out, SERVFAIL, REFUSED, unreachable server: try again later.
            raise _Lookup("again", name, rdtype) from None


def policy_for(settings: DeliverySettings) -> DnsPolicy:
    protocols = set(settings.inet_protocols)
    return DnsPolicy(
        host_lookup=tuple(settings.smtp_host_lookup),
        address_limit=settings.smtp_mx_address_limit,
        randomize=settings.smtp_randomize_addresses,
        preference=settings.smtp_address_preference,
        ipv4=bool(protocols & {"all", "ipv4"}),
        ipv6=bool(protocols & {"all", "ipv6"}),
        myhostname=settings.myhostname,
        self_addresses=frozenset(
            str(ipaddress.ip_address(a.strip("[]"))) for a in settings.proxy_interfaces
        ),
    )


def resolver_for(settings: DeliverySettings) -> Resolver:
    """The resolver the settings ask for: DNS (MX) unless DNS is disabled,
    then native lookups only. Builds the DNS client; sends nothing."""
    policy = policy_for(settings)
    families = [f for f, on in ((socket.AF_INET, policy.ipv4),
                                (socket.AF_INET6, policy.ipv6)) if on]
    native = HostResolver(families)
    if not settings.dns_enabled:
        return _LimitedResolver(native, policy.address_limit)
    client = make_dns_client(settings.dns_nameservers, settings.dns_timeout)
    return DnsResolver(client, policy, native)


class _LimitedResolver:
    """Native lookups with smtp_mx_address_limit applied (DNS disabled)."""

    def __init__(self, inner: HostResolver, limit: int) -> None:
        self.inner = inner
        self.limit = limit

    async def resolve(self, nexthop: Nexthop) -> list[Address]:
        found = await self.inner.resolve(nexthop)
        return found[: self.limit] if self.limit > 0 else found
