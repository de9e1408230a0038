"""ingress-smtp: the RCPT-time decision (Postfix smtpd_check.c, in small).

The decision itself lives in ``postfleet.core.routing.rcpt_checks`` so that
``postfleet route`` answers exactly what this server answers; this module is
its face for ingress-smtp (restriction names, validation, the relay check,
reject_unlisted_recipient) plus what only a server needs (client addresses).

Postfix parameters: smtpd_relay_restrictions, smtpd_recipient_restrictions,
smtpd_reject_unlisted_recipient, mynetworks, relay_domains / mydestination /
virtual_*_domains and the recipient tables (through the routing snapshot),
smtpd_forbid_bare_newline_exclusions.
"""

from __future__ import annotations

import functools
import ipaddress

from postfleet.core.routing.rcpt_checks import (
    DEFAULT_RELAY_RESTRICTIONS,
    DEFER,
    DEFER_UNAUTH_DESTINATION,
    KNOWN_RESTRICTIONS,
    PERMIT,
    PERMIT_AUTH_DESTINATION,
    PERMIT_MYNETWORKS,
    PERMIT_SASL_AUTHENTICATED,
    REJECT,
    REJECT_UNAUTH_DESTINATION,
    REJECT_UNLISTED_RECIPIENT,
    Client,
    check_no_open_relay,
    check_recipient,
    client_listed,
    parse_network,
    unlisted_recipient,
    validate_restrictions,
)

__all__ = [
    "DEFAULT_RELAY_RESTRICTIONS",
    "DEFER",
    "DEFER_UNAUTH_DESTINATION",
    "KNOWN_RESTRICTIONS",
    "PERMIT",
    "PERMIT_AUTH_DESTINATION",
    "PERMIT_MYNETWORKS",
    "PERMIT_SASL_AUTHENTICATED",
    "REJECT",
    "REJECT_UNAUTH_DESTINATION",
    "REJECT_UNLISTED_RECIPIENT",
    "Client",
    "check_no_open_relay",
    "check_recipient",
    "client_listed",
    "normalize_ip",
    "parse_network",
    "unlisted_recipient",
    "validate_restrictions",
]


@functools.lru_cache(maxsize=4096)  # asked many times per session (session.client_ip)
def normalize_ip(address: str) -> str:
    """``::ffff:10.1.2.3`` -> ``10.1.2.3``; anything unparsable stays as given."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
