"""RCPT-time decisions on a routing snapshot (Postfix smtpd_check.c, in small):
the relay restrictions and the recipient tables.

Used by ingress-smtp at RCPT TO and by ``postfleet route`` (the ``reject``
an outside client would get), so both answer the same.

Postfix parameters: smtpd_relay_restrictions (default here:
``permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination`` --
Postfix's own default ends in defer_unauth_destination; DESIGN invariant 4
wants the permanent 554), smtpd_recipient_restrictions (default empty),
smtpd_reject_unlisted_recipient (yes), mynetworks, local_recipient_maps,
virtual_alias_maps, virtual_mailbox_maps, canonical_maps,
recipient_canonical_maps, relocated_maps, show_user_unknown_table_name.

Each restriction list is evaluated in order; the first restriction that
decides ends the list (``permit*`` lets the next list run, ``reject*``/
``defer*`` answer the client); a list that decides nothing permits. Then,
unless a list rejected, the implicit reject_unlisted_recipient runs -- for
every client, mynetworks included, as in Postfix:

- a bare ``postmaster`` is always accepted (RFC 5321);
- an address that a canonical or virtual alias table knows is accepted;
- an address that resolves to the error transport is refused with that
  transport's text: unknown users of virtual alias domains ("550 5.1.1
  <a>: Recipient address rejected: User unknown in virtual alias table"),
  relocated users ("550 5.1.6 ... User has moved to NEW"), ``error:`` routes;
- in a local domain, when local_recipient_maps is set, a user it does not
  list is refused ("User unknown in local recipient table"), except
  postmaster, MAILER-DAEMON and double-bounce;
- in a virtual mailbox domain, likewise with virtual_mailbox_maps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postfleet.core.routing.addresses import internal_form, split_address, split_extension
from postfleet.core.routing.resolver import (
    ERROR_TRANSPORT,
    AddressClass,
    authorized_destination,
    client_in_mynetworks,
    is_local_domain,
    resolve,
)
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.tables import mail_addr_find
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply

PERMIT_MYNETWORKS = "permit_mynetworks"
PERMIT_SASL_AUTHENTICATED = "permit_sasl_authenticated"
PERMIT_AUTH_DESTINATION = "permit_auth_destination"
REJECT_UNAUTH_DESTINATION = "reject_unauth_destination"
DEFER_UNAUTH_DESTINATION = "defer_unauth_destination"
REJECT_UNLISTED_RECIPIENT = "reject_unlisted_recipient"
PERMIT = "permit"
REJECT = "reject"
DEFER = "defer"

KNOWN_RESTRICTIONS = frozenset({
    PERMIT_MYNETWORKS, PERMIT_SASL_AUTHENTICATED, PERMIT_AUTH_DESTINATION,
    REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION, REJECT_UNLISTED_RECIPIENT,
    PERMIT, REJECT, DEFER,
})
# At least one of these must be reachable, as Postfix insists.
_RELAY_STOPPERS = frozenset({REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION, REJECT, DEFER})

DEFAULT_RELAY_RESTRICTIONS = (
    PERMIT_MYNETWORKS, PERMIT_SASL_AUTHENTICATED, REJECT_UNAUTH_DESTINATION,
)

# Local users every system has; smtpd never refuses them (smtpd_check.c).
_ALWAYS_LOCAL = ("postmaster", "mailer-daemon", "double-bounce")

# Documentation addresses: an "outside" client for `postfleet route`.
_OUTSIDE_CANDIDATES = ("192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1")


@dataclass(frozen=True)
class Client:
    """What the restrictions know about the SMTP client."""

    address: str  # IP address, "" when unknown (not an inet socket)
    sasl_username: str = ""


def outside_client(snapshot: RoutingSnapshot) -> Client:
    """A client that is neither in mynetworks nor authenticated."""
    for ip in _OUTSIDE_CANDIDATES:
        if not client_in_mynetworks(snapshot, ip):
            return Client(ip)
    return Client("")


def validate_restrictions(name: str, values: Iterable[str]) -> list[str]:
    out = [v.strip().lower() for v in values if v.strip()]
    unknown = [v for v in out if v not in KNOWN_RESTRICTIONS]
    if unknown:
        known = ", ".join(sorted(KNOWN_RESTRICTIONS))
        raise ValueError(f"{name}: unknown restriction {', '.join(unknown)} (known: {known})")
    return out


def check_no_open_relay(relay: Sequence[str], recipient: Sequence[str]) -> None:
    """Postfix's start-up check: some list must be able to refuse relaying."""
    if not _RELAY_STOPPERS & (set(relay) | set(recipient)):
        raise ValueError(
            "smtpd_relay_restrictions or smtpd_recipient_restrictions must contain at least "
            "one of reject_unauth_destination, defer_unauth_destination, reject, defer "
            "(otherwise this server would be an open relay)"
        )


def decide(
    name: str, snapshot: RoutingSnapshot, client: Client, recipient: str
) -> SmtpReply | bool | None:
    """One restriction of this module's: True = permit, a reply = refuse,
    None = no decision (DUNNO). ingress-smtp's full restriction lists hand
    these names here, so that `postfleet route` and the server agree."""
    if name == PERMIT_MYNETWORKS:
        return True if client.address and client_in_mynetworks(snapshot, client.address) else None
    if name == PERMIT_SASL_AUTHENTICATED:
        return True if client.sasl_username else None
    if name == PERMIT_AUTH_DESTINATION:
        return True if authorized_destination(snapshot, recipient) else None
    if name in (REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION):
        if authorized_destination(snapshot, recipient):
            return None
        base = (replies.RELAY_DENIED if name == REJECT_UNAUTH_DESTINATION
                else replies.RELAY_DEFERRED)
        return base.with_text(f"<{recipient}>: {base.text}")
    if name == REJECT_UNLISTED_RECIPIENT:
        return unlisted_recipient(snapshot, recipient)
    if name == PERMIT:
        return True
    if name in (REJECT, DEFER):
        base = replies.RCPT_ACCESS_DENIED if name == REJECT else replies.RCPT_ACCESS_DEFERRED
        return base.with_text(f"<{recipient}>: {base.text}")
    raise ValueError(f"not a recipient restriction: {name}")


def _evaluate(
    restrictions: Sequence[str], snapshot: RoutingSnapshot, client: Client, recipient: str
) -> SmtpReply | bool | None:
    """True = permit, a reply = refuse, None = no decision (DUNNO)."""
    for name in restrictions:
        decision = decide(name, snapshot, client, recipient)
        if decision is not None:
            return decision
    return None


def check_recipient(
    snapshot: RoutingSnapshot,
    client: Client,
    recipient: str,
    *,
    relay_restrictions: Sequence[str],
    recipient_restrictions: Sequence[str],
    reject_unlisted_recipient: bool = True,
) -> SmtpReply | None:
    """The reply refusing ``recipient``, or None when it is accepted."""
    recipient = internal_form(recipient)
    if recipient.lower() == "postmaster":
        return None
    for restrictions in (relay_restrictions, recipient_restrictions):
        decision = _evaluate(restrictions, snapshot, client, recipient)
        if isinstance(decision, SmtpReply):
            return decision
    if reject_unlisted_recipient:
        return unlisted_recipient(snapshot, recipient)
    return None


def _known(snapshot: RoutingSnapshot, table: Mapping[str, Any], address: str) -> bool:
    _, domain = split_address(address)
    return mail_addr_find(table, address, local=is_local_domain(snapshot, domain),
                          delimiter=snapshot.recipient_delimiter) is not None


def _in_local_recipient_maps(snapshot: RoutingSnapshot, address: str) -> bool:
    keys: dict[str, Any] = {}
    tables: list[Mapping[str, Any]] = []
    for entry in snapshot.expand_list(snapshot.local_recipient_maps):
        ref = snapshot.table_ref(entry)
        if ref is not None:
            tables.append(snapshot.table(ref))
        elif not entry.startswith("$"):
            keys[entry] = True
    return any(_known(snapshot, t, address) for t in [keys, *tables])


def unlisted_recipient(snapshot: RoutingSnapshot, recipient: str) -> SmtpReply | None:
    """reject_unlisted_recipient (smtpd_check.c check_rcpt_maps)."""
    if recipient.lower() == "postmaster":
        return None
    route = resolve(snapshot, recipient)
    address = route.recipient.lower()
    for table in (snapshot.recipient_canonical_maps, snapshot.canonical_maps,
                  snapshot.virtual_alias_maps):
        if _known(snapshot, table, address):
            return None
    if route.transport == ERROR_TRANSPORT:
        return _error_reply(route.nexthop, recipient)
    unknown: SmtpReply | None = None
    if route.address_class is AddressClass.LOCAL:
        local, _ = split_address(address)
        if (snapshot.local_recipient_maps and local not in _ALWAYS_LOCAL
                and split_extension(local, snapshot.recipient_delimiter)[0] not in _ALWAYS_LOCAL
                and not _in_local_recipient_maps(snapshot, address)):
            unknown = replies.USER_UNKNOWN_LOCAL
    elif route.address_class is AddressClass.VIRTUAL_MAILBOX:
        if (snapshot.virtual_mailbox_maps
                and not _known(snapshot, snapshot.virtual_mailbox_maps, address)):
            unknown = replies.USER_UNKNOWN_VIRTUAL_MAILBOX
    if unknown is None:
        return None
    if not snapshot.show_user_unknown_table_name:
        unknown = replies.USER_UNKNOWN
    return replies.recipient_rejected(unknown, recipient)


def _error_reply(nexthop: str, recipient: str) -> SmtpReply:
    """The error transport's text as an RCPT reply (dsn_split: "5.1.6 text")."""
    status, _, text = nexthop.partition(" ")
    parts = status.split(".")
    if not (len(parts) == 3 and all(p.isdigit() for p in parts) and status[0] in "45"):
        status, text = "5.1.1", nexthop
    if status.startswith("4"):
        status = "5" + status[1:]  # a 550 reply carries a 5.X.X status
    return replies.recipient_rejected(SmtpReply(550, status, text), recipient)


def client_listed(snapshot: RoutingSnapshot, exclusions: Sequence[str], ip: str) -> bool:
    """A client list (smtpd_forbid_bare_newline_exclusions,
    smtpd_client_event_limit_exceptions): ``$mynetworks`` or CIDR patterns."""
    if not ip:
        return False
    for entry in exclusions:
        if entry == "$mynetworks":
            if client_in_mynetworks(snapshot, ip):
                return True
            continue
        try:
            if ipaddress.ip_address(ip) in parse_network(entry):
                return True
        except ValueError:
            continue
    return False


def parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``10.0.0.0/8``, ``[::1]/128`` or a single address, as in mynetworks."""
    return ipaddress.ip_network(entry.strip("[]").replace("]/", "/"), strict=False)
