"""Resolve a recipient to (address class, transport, nexthop): trivial-rewrite's
"resolve" service, as Postfix's resolve.c and transport.c do it.

Postfix parameters: mydestination, virtual_alias_domains,
virtual_mailbox_domains, relay_domains, local_transport, virtual_transport,
relay_transport, default_transport, relayhost, transport_maps,
relocated_maps, recipient_delimiter, parent_domain_matches_subdomains,
show_user_unknown_table_name.

1. The address is put in canonical form (``user`` -> ``user@$myorigin``).
2. Its domain picks the address class, first match wins: local
   (mydestination), virtual alias, virtual mailbox, relay (relay_domains,
   subdomains included), default.
3. The class gives the transport and the nexthop:

   - local: local_transport, nexthop the recipient domain;
   - virtual alias: ``error`` with "5.1.1 User unknown in virtual alias
     table" (cleanup has already rewritten every known address);
   - virtual mailbox: virtual_transport, nexthop the recipient domain;
   - relay: relay_transport; default: default_transport. For both, the
     nexthop is relayhost when set, else the recipient domain. (Postfix
     applies relayhost to the relay class too: postconf(5) relay_transport
     "the nexthop destination is taken from $relay_transport,
     $sender_dependent_relayhost_maps, $relayhost, or from the recipient
     domain". Never to the local or virtual classes.)

   A nexthop written in the transport parameter itself (``local:$myhostname``,
   ``relay:[gw]:2525``) overrides all of these.
4. transport_maps may override (not for the virtual alias class): looked up
   as ``user+ext@domain``, ``user@domain``, ``domain``, ``.parent``..., ``*``.
   ``transport:nexthop`` sets both; ``transport:`` (empty nexthop) sets the
   transport and resets the nexthop to the recipient domain (``error:``
   to "Address is undeliverable"); ``:nexthop`` keeps the transport; ``:``
   changes nothing. ``[host]:port`` is passed on as written (no MX lookup
   is the smtp client's business).
5. relocated_maps, for every class, last: ``error`` with "5.1.6 User has
   moved to NEW".
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from postfleet.core.routing.addresses import is_routed, split_address
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.tables import mail_addr_find, transport_keys
from postfleet.core.routing.trivial_rewrite import rewrite_local
from postfleet.core.smtp import replies

ERROR_TRANSPORT = "error"


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
    # The address in canonical form, as resolved.
    recipient: str = ""
    # The local part carries a route (@ ! %): never relayed.
    routed: bool = False


def domain_matches(domain: str, domains: frozenset[str]) -> bool:
    """Exact match, or a parent listed (parent_domain_matches_subdomains style)."""
    if domain in domains:
        return True
    parts = domain.split(".")
    return any(".".join(parts[i:]) in domains for i in range(1, len(parts)))


def address_class(snapshot: RoutingSnapshot, domain: str) -> AddressClass:
    """The class of a recipient domain (an empty domain is local)."""
    domain = domain.lower().rstrip(".")
    if not domain or snapshot.local_domain_list.match(domain):
        return AddressClass.LOCAL
    if snapshot.virtual_alias_domain_list.match(domain):
        return AddressClass.VIRTUAL_ALIAS
    if snapshot.virtual_mailbox_domain_list.match(domain):
        return AddressClass.VIRTUAL_MAILBOX
    if snapshot.relay_domain_list.match(domain):
        return AddressClass.RELAY
    return AddressClass.DEFAULT


def is_local_domain(snapshot: RoutingSnapshot, domain: str) -> bool:
    """mail_addr_find's "local" test: $myorigin or $mydestination."""
    domain = domain.lower().rstrip(".")
    return domain == snapshot.origin or snapshot.local_domain_list.match(domain)


def _split_transport(value: str) -> tuple[str, str]:
    transport, _, nexthop = value.partition(":")
    return transport.strip(), nexthop.strip()


def transport_lookup(snapshot: RoutingSnapshot, address: str) -> str | None:
    """The transport_maps entry for ``address`` (canonical form), or None."""
    tmap = snapshot.transport_maps
    if not tmap:
        return None
    keys = transport_keys(address, delimiter=snapshot.recipient_delimiter,
                          parent_style=snapshot.parent_style("transport_maps"))
    for key in keys:
        if key in tmap:
            return tmap[key]
    return None


def _virtual_alias_unknown(snapshot: RoutingSnapshot) -> str:
    reply = (replies.USER_UNKNOWN_VIRTUAL_ALIAS if snapshot.show_user_unknown_table_name
             else replies.USER_UNKNOWN)
    return f"{reply.status} {reply.text}"


def _strip_local_route(snapshot: RoutingSnapshot, recipient: str) -> str:
    """resolve.c's first loop: ``"user@remote"@local`` and ``site!user@local``
    (swap_bangpath) are resolved as ``user@remote`` / ``user@site``."""
    for _ in range(len(recipient)):
        local, domain = split_address(recipient)
        if not snapshot.local_domain_list.match(domain):
            break
        inner = local[1:-1] if len(local) > 1 and local[0] == local[-1] == '"' else local
        if "@" in inner:
            recipient = rewrite_local(snapshot, inner)
        elif "!" in inner:
            site, _, user = inner.partition("!")
            recipient = rewrite_local(snapshot, f"{user}@{site}")
        else:
            break
    return recipient


def resolve(snapshot: RoutingSnapshot, address: str) -> Route:
    recipient = rewrite_local(snapshot, address) or f"MAILER-DAEMON@{snapshot.myhostname}"
    recipient = _strip_local_route(snapshot, recipient)
    local, domain = split_address(recipient)
    aclass = address_class(snapshot, domain)
    if aclass is AddressClass.LOCAL:
        transport, nexthop = snapshot.expand(snapshot.local_transport), domain
    elif aclass is AddressClass.VIRTUAL_ALIAS:
        transport, nexthop = ERROR_TRANSPORT, _virtual_alias_unknown(snapshot)
    elif aclass is AddressClass.VIRTUAL_MAILBOX:
        transport, nexthop = snapshot.expand(snapshot.virtual_transport), domain
    else:
        param = (snapshot.relay_transport if aclass is AddressClass.RELAY
                 else snapshot.default_transport)
        relayhost = snapshot.expand(snapshot.relayhost).strip()
        transport, nexthop = snapshot.expand(param), relayhost or domain
    # An explicit main.cf "transport:nexthop" overrides the nexthop.
    transport, explicit = _split_transport(transport)
    if explicit and aclass is not AddressClass.VIRTUAL_ALIAS:
        nexthop = explicit

    if aclass is not AddressClass.VIRTUAL_ALIAS:
        entry = transport_lookup(snapshot, recipient)
        if entry is not None:
            new_transport, new_nexthop = _split_transport(snapshot.expand(entry))
            if new_transport:
                transport = new_transport
                if new_nexthop:
                    nexthop = new_nexthop
                elif transport == ERROR_TRANSPORT:
                    nexthop = replies.ADDRESS_UNDELIVERABLE.text
                else:
                    nexthop = domain
            elif new_nexthop:
                nexthop = new_nexthop

    moved = mail_addr_find(snapshot.relocated_maps, recipient,
                           local=is_local_domain(snapshot, domain), delimiter="")
    if moved is not None:
        transport = ERROR_TRANSPORT
        nexthop = f"{replies.USER_MOVED.status} {replies.USER_MOVED.text} {moved.value}"
    return Route(aclass, transport, nexthop, recipient, is_routed(local))


def may_relay_to(snapshot: RoutingSnapshot, domain: str) -> bool:
    """permit_auth_destination for a domain: local, virtual and relay domains."""
    return address_class(snapshot, domain) is not AddressClass.DEFAULT


def authorized_destination(snapshot: RoutingSnapshot, recipient: str) -> bool:
    """permit_auth_destination for an address (smtpd_check.c): final
    destinations always; relay domains unless the local part is routed."""
    route = resolve(snapshot, recipient)
    if route.routed:  # allow_untrusted_routing=no
        return False
    if route.address_class in (AddressClass.LOCAL, AddressClass.VIRTUAL_ALIAS,
                               AddressClass.VIRTUAL_MAILBOX):
        return True
    return route.address_class is AddressClass.RELAY


def client_in_mynetworks(snapshot: RoutingSnapshot, ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in snapshot.networks)


def filter_route(
    content_filter: str, recipient: str, default_filter_nexthop: str, myhostname: str
) -> tuple[str, str]:
    """Where a message with a content filter goes instead of its recipient's
    route, as Postfix's qmgr decides it: ``transport:nexthop`` as written;
    without a nexthop, default_filter_nexthop, else the recipient's domain,
    else myhostname."""
    transport, _, nexthop = content_filter.partition(":")
    if not nexthop:
        _local, at, domain = recipient.rpartition("@")
        nexthop = default_filter_nexthop or (domain if at else "") or myhostname
    return transport, nexthop
