"""ingress-smtp: the relay decision at RCPT time (Postfix smtpd_check.c, in small).

Postfix parameters: smtpd_relay_restrictions (default here:
``permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination`` --
Postfix's own default ends in defer_unauth_destination; DESIGN invariant 4
wants the permanent 554), smtpd_recipient_restrictions (default empty),
mynetworks, relay_domains / mydestination / virtual_*_domains (through the
routing snapshot), smtpd_forbid_bare_newline_exclusions.

Each list is evaluated in order; the first restriction that decides ends the
list (``permit*`` lets the next list run, ``reject*``/``defer*`` answer the
client); a list that decides nothing permits. Like Postfix, a configuration
whose lists cannot refuse relaying is an error (no open relay by accident).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from postfleet.core.routing.resolver import client_in_mynetworks, may_relay_to, split_address
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply

PERMIT_MYNETWORKS = "permit_mynetworks"
PERMIT_SASL_AUTHENTICATED = "permit_sasl_authenticated"
PERMIT_AUTH_DESTINATION = "permit_auth_destination"
REJECT_UNAUTH_DESTINATION = "reject_unauth_destination"
DEFER_UNAUTH_DESTINATION = "defer_unauth_destination"
PERMIT = "permit"
REJECT = "reject"
DEFER = "defer"

KNOWN_RESTRICTIONS = frozenset({
    PERMIT_MYNETWORKS, PERMIT_SASL_AUTHENTICATED, PERMIT_AUTH_DESTINATION,
    REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION, PERMIT, REJECT, DEFER,
})
# At least one of these must be reachable, as Postfix insists.
_RELAY_STOPPERS = frozenset({REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION, REJECT, DEFER})

DEFAULT_RELAY_RESTRICTIONS = (
    PERMIT_MYNETWORKS, PERMIT_SASL_AUTHENTICATED, REJECT_UNAUTH_DESTINATION,
)


@dataclass(frozen=True)
class Client:
    """What the restrictions know about the SMTP client."""

    address: str  # IP address, "" when unknown (not an inet socket)
    sasl_username: str = ""


def normalize_ip(address: str) -> str:
    """``::ffff:10.1.2.3`` -> ``10.1.2.3``; anything unparsable stays as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


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


def _evaluate(
    restrictions: Sequence[str], snapshot: RoutingSnapshot, client: Client, recipient: str
) -> SmtpReply | bool | None:
    """True = permit, a reply = refuse, None = no decision (DUNNO)."""
    _, domain = split_address(recipient)
    for name in restrictions:
        if name == PERMIT_MYNETWORKS:
            if client.address and client_in_mynetworks(snapshot, client.address):
                return True
        elif name == PERMIT_SASL_AUTHENTICATED:
            if client.sasl_username:
                return True
        elif name == PERMIT_AUTH_DESTINATION:
            if may_relay_to(snapshot, domain):
                return True
        elif name in (REJECT_UNAUTH_DESTINATION, DEFER_UNAUTH_DESTINATION):
            if not may_relay_to(snapshot, domain):
                base = (replies.RELAY_DENIED if name == REJECT_UNAUTH_DESTINATION
                        else replies.RELAY_DEFERRED)
                return base.with_text(f"<{recipient}>: {base.text}")
        elif name == PERMIT:
            return True
        elif name in (REJECT, DEFER):
            base = replies.RCPT_ACCESS_DENIED if name == REJECT else replies.RCPT_ACCESS_DEFERRED
            return base.with_text(f"<{recipient}>: {base.text}")
    return None


def check_recipient(
    snapshot: RoutingSnapshot,
    client: Client,
    recipient: str,
    *,
    relay_restrictions: Sequence[str],
    recipient_restrictions: Sequence[str],
) -> SmtpReply | None:
    """The reply refusing ``recipient``, or None when it is accepted."""
    for restrictions in (relay_restrictions, recipient_restrictions):
        decision = _evaluate(restrictions, snapshot, client, recipient)
        if isinstance(decision, SmtpReply):
            return decision
    return None


def bare_newline_excluded(snapshot: RoutingSnapshot, exclusions: Sequence[str], ip: str) -> bool:
    """smtpd_forbid_bare_newline_exclusions: ``$mynetworks`` or CIDR patterns."""
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
