"""Address forms: split, extensions, routed local parts, address literals.
Pure string work with no configuration (the configured "local" rewriting is
``trivial_rewrite.py``).

Postfix parameters: recipient_delimiter (passed in by callers).

A local part that carries ``@``, ``!`` or ``%`` counts as "routed" and is
never relayed (smtpd's permit_auth_destination); Postfix's ``swap_bangpath``
and ``percent_hack`` UUCP-era forms are not rewritten.
"""

from __future__ import annotations

# Characters that make a local part a sender-specified route.
ROUTING_OPERATORS = "@!%"


def internal_form(address: str) -> str:
    """RFC 5321's quoted local part in Postfix's internal form, as smtpd
    hands an address on: ``"rgarcia"@univ.es`` is ``rgarcia@univ.es`` and
    ``"a\\"b"@x`` is ``a"b@x``; an unquoted address is unchanged. Lookups,
    rewriting and routing all work on this form."""
    local, at, domain = address.rpartition("@") if "@" in address else (address, "", "")
    if len(local) < 2 or not (local[0] == local[-1] == '"'):
        return address
    inner, out, escaped = local[1:-1], [], False
    for ch in inner:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out) + at + domain


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
