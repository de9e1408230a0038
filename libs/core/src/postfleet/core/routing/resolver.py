"""Resolve a recipient to (address class, transport, nexthop): trivial-rewrite's
"resolve" service.

Postfix parameters: transport_maps, relayhost, default_transport,
local_transport, relay_transport, virtual_transport, mydestination,
relay_domains, virtual_alias_domains, virtual_mailbox_domains.
transport_maps lookup order follows transport(5): ``user@domain``,
``domain``, ``.parent`` domains (parent_domain_matches_subdomains style),
then ``*``. An empty nexthop keeps the recipient domain; ``[host]:port``
means no MX lookup.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from postfleet.core.routing.snapshot import RoutingSnapshot


class AddressClass(enum.StrEnum):
    LOCAL = "local"
    VIRTUAL_ALIAS = "virtual_alias"
    VIRTUAL_MAILBOX = "virtual_mailbox"
    RELAY = "relay"
    DEFAULT = "default"


@dataclass(frozen=True)
class Route:
    address_class: AddressClass
    transport: str
    nexthop: str


def split_address(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def domain_matches(domain: str, domains: frozenset[str]) -> bool:
    """Exact match, or a parent listed (Postfix's default
    parent_domain_matches_subdomains covers relay_domains)."""
    if domain in domains:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in domains for i in range(1, len(parts)))


def address_class(snapshot: RoutingSnapshot, domain: str) -> AddressClass:
    if not domain or domain in snapshot.local_domains:
        return AddressClass.LOCAL
    if domain in snapshot.virtual_alias_domain_set:
        return AddressClass.VIRTUAL_ALIAS
    if domain in snapshot.virtual_mailbox_domain_set:
        return AddressClass.VIRTUAL_MAILBOX
    if domain_matches(domain, snapshot.relay_domain_set):
        return AddressClass.RELAY
    return AddressClass.DEFAULT


def _split_transport(value: str) -> tuple[str, str]:
    transport, _, nexthop = value.partition(":")
    return transport.strip(), nexthop.strip()


def transport_lookup(snapshot: RoutingSnapshot, address: str) -> str | None:
    """transport_maps in transport(5) order; None when nothing matches."""
    tmap = snapshot.transport_maps
    if not tmap:
        return None
    local, domain = split_address(address.lower())
    if local and domain and f"{local}@{domain}" in tmap:
        return tmap[f"{local}@{domain}"]
    if domain in tmap:
        return tmap[domain]
    parts = domain.split(".")
    for i in range(1, len(parts)):
        key = "." + ".".join(parts[i:])
        if key in tmap:
            return tmap[key]
    return tmap.get("*")


def resolve(snapshot: RoutingSnapshot, address: str) -> Route:
    _, domain = split_address(address)
    aclass = address_class(snapshot, domain)
    defaults = {
        AddressClass.LOCAL: snapshot.local_transport,
        AddressClass.VIRTUAL_ALIAS: "error:User unknown in virtual alias table",
        AddressClass.VIRTUAL_MAILBOX: snapshot.virtual_transport,
        AddressClass.RELAY: snapshot.relay_transport,
        AddressClass.DEFAULT: snapshot.default_transport,
    }
    transport, nexthop = _split_transport(snapshot.expand(defaults[aclass]))
    if aclass in (AddressClass.RELAY, AddressClass.DEFAULT) and not nexthop and snapshot.relayhost:
        nexthop = snapshot.expand(snapshot.relayhost)
    override = transport_lookup(snapshot, address)
    if override is not None:
        o_transport, o_nexthop = _split_transport(snapshot.expand(override))
        transport = o_transport or transport
        nexthop = o_nexthop or (nexthop if not o_transport else "")
    if not nexthop:
        nexthop = domain
    # Postfix's default master.cf runs "relay" as the smtp client.
    return Route(aclass, transport, nexthop)


def may_relay_to(snapshot: RoutingSnapshot, domain: str) -> bool:
    """permit_auth_destination: local, virtual and relay domains."""
    return address_class(snapshot, domain) is not AddressClass.DEFAULT


def client_in_mynetworks(snapshot: RoutingSnapshot, ip: str) -> bool:
    import ipaddress

    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in snapshot.networks)
