"""Address forms: split, extensions, and trivial-rewrite's "local" rewriting
(the canonical form every other routing step works on).

Postfix parameters: myorigin, mydomain, append_at_myorigin,
append_dot_mydomain, recipient_delimiter.

Only the forms SMTP can carry are handled: ``user@domain``, a bare ``user``
(which gets ``@$myorigin``), a trailing dot or ``@`` on the domain, and RFC
5321 source routes (``@a,@b:user@c``, reduced to ``user@c``). Postfix's
``swap_bangpath`` and ``percent_hack`` UUCP-era forms are not rewritten; a
local part that still carries ``@``, ``!`` or ``%`` counts as "routed" and is
never relayed (smtpd's permit_auth_destination).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from postfleet.core.routing.snapshot import RoutingSnapshot

# Characters that make a local part a sender-specified route.
ROUTING_OPERATORS = "@!%"


def split_address(address: str) -> tuple[str, str]:
    """``user@Domain.`` -> (``user``, ``domain``); no ``@`` -> (address, "")."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def split_extension(local: str, delimiters: str) -> tuple[str, str]:
    """``user+ext`` -> (``user``, ``+ext``) with recipient_delimiter ``+``.

    ``delimiters`` is a set of characters (Postfix 2.11+): the first of them in
    the local part starts the extension. Like Postfix's split_addr, a local
    part that starts with the delimiter is not split, and with ``-`` the
    forms ``owner-list`` and ``list-request`` are never split.
    """
    if not delimiters or not local:
        return local, ""
    if "-" in delimiters:
        lowered = local.lower()
        if lowered.startswith("owner-") or lowered.endswith("-request"):
            return local, ""
    for i, ch in enumerate(local):
        if ch in delimiters:
            if i == 0:
                return local, ""
            return local[:i], local[i:]
    return local, ""


def add_extension(address: str, extension: str) -> str:
    """Insert ``extension`` before the ``@`` (propagate_unmatched_extensions)."""
    if not extension:
        return address
    local, at, domain = address.rpartition("@")
    if not at:
        return address + extension
    return f"{local}{extension}@{domain}"


def is_routed(local: str) -> bool:
    return any(ch in local for ch in ROUTING_OPERATORS)


def is_literal(domain: str) -> bool:
    """``[192.0.2.1]`` / ``[IPv6:...]``: an address literal, not a name."""
    return domain.startswith("[") and domain.endswith("]")


def _strip_source_route(address: str) -> str:
    # RFC 5321 "@a,@b:user@c" -> "user@c"
    if address.startswith("@") and ":" in address:
        return address.split(":", 1)[1]
    return address


def rewrite_local(snapshot: RoutingSnapshot, address: str) -> str:
    """trivial-rewrite's "local" context, applied to every envelope address.

    The null address stays null. A bare ``user`` becomes ``user@$myorigin``
    (append_at_myorigin), ``user@host`` becomes ``user@host.$mydomain`` only
    with append_dot_mydomain=yes (off since compatibility_level 1).
    """
    address = _strip_source_route(address.strip())
    if not address:
        return ""
    if address.endswith("@"):  # "user@" is "user" (resolve_null_domain)
        address = address[:-1]
    local, at, domain = address.rpartition("@")
    if not at:
        if not snapshot.append_at_myorigin:
            return address
        origin = snapshot.expand(snapshot.myorigin).strip().lower()
        return f"{address}@{origin}" if origin else address
    domain = domain.rstrip(".") if not domain.endswith("..") else domain
    if (snapshot.append_dot_mydomain and domain and "." not in domain
            and not is_literal(domain)):
        mydomain = snapshot.expand("$mydomain").strip().lower()
        if mydomain:
            domain = f"{domain}.{mydomain}"
    return f"{local}@{domain}"
