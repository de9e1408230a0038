"""trivial-rewrite's "local" context: the canonical form every other routing
step works on.

Postfix parameters: myorigin, mydomain, append_at_myorigin,
append_dot_mydomain.

Only the forms SMTP can carry are handled: ``user@domain``, a bare ``user``
(which gets ``@$myorigin``), a trailing dot or ``@`` on the domain, and RFC
5321 source routes (``@a,@b:user@c``, reduced to ``user@c``).
"""

from __future__ import annotations

from postfleet.core.routing.addresses import internal_form, is_literal
from postfleet.core.routing.snapshot import RoutingSnapshot


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
    address = internal_form(_strip_source_route(address.strip()))
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
