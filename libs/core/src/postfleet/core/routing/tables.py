"""Postfix's lookup semantics over the snapshot's tables: domain lists
(match_list/match_ops) and address lookups (mail_addr_find).

Postfix parameters: parent_domain_matches_subdomains (which lists let
``example.com`` match its subdomains), recipient_delimiter.

Domain lists (mydestination, relay_domains): an entry matches the name
itself; in a "parent style" list (relay_domains by default) it also matches
every subdomain; otherwise ``.example.com`` matches the subdomains. ``!entry``
excludes; the first matching entry decides. Table entries are looked up with
the name, then with each parent (``.b.c`` / ``b.c``). String lists
(virtual_alias_domains, virtual_mailbox_domains) match exact names in
Postfix; postfleet also lets their ``.example.com`` entries match subdomains
(the operator's includeSubdomains writes them; Postfix would never match such
an entry, so no Postfix configuration changes meaning). Their tables match
exact names only.

Address lookups, in canonical(5)/virtual(5)/relocated(5) order:
``user+ext@domain``, ``user@domain``, then — only when the domain is local
($myorigin or $mydestination) — ``user+ext``, ``user``, and last ``@domain``.
Keys are case-folded, as postmap builds them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from postfleet.core.routing.addresses import split_address, split_extension


@dataclass(frozen=True)
class _Pattern:
    negated: bool
    text: str


@dataclass(frozen=True)
class DomainList:
    """A compiled domain list: patterns, then tables, first match wins."""

    patterns: tuple[_Pattern, ...]
    tables: tuple[Mapping[str, Any], ...]
    parent_style: bool
    exact_only: bool

    def match(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        if not name:
            return False
        for pattern in self.patterns:
            if self._match_one(name, pattern.text):
                return not pattern.negated
        return any(self._in_table(name, table) for table in self.tables)

    def _match_one(self, name: str, pattern: str) -> bool:
        if name == pattern:
            return True
        if self.parent_style and not self.exact_only:
            return name.endswith("." + pattern) and not pattern.startswith(".")
        return pattern.startswith(".") and name.endswith(pattern) and len(name) > len(pattern)

    def _in_table(self, name: str, table: Mapping[str, Any]) -> bool:
        if name in table:
            return True
        if self.exact_only:
            return False
        labels = name.split(".")
        for i in range(1, len(labels)):
            parent = ".".join(labels[i:])
            if (parent if self.parent_style else "." + parent) in table:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self.patterns or self.tables)


def domain_list(
    entries: Sequence[str], tables: Sequence[Mapping[str, Any]], *, parent_style: bool,
    exact_only: bool = False,
) -> DomainList:
    patterns = tuple(
        _Pattern(True, e[1:]) if e.startswith("!") else _Pattern(False, e) for e in entries if e
    )
    return DomainList(patterns, tuple(tables), parent_style, exact_only)


@dataclass(frozen=True)
class Found:
    """One table hit: the value, the key that matched, and the address
    extension the key did not include (for propagate_unmatched_extensions)."""

    value: Any
    key: str
    unmatched_extension: str = ""


def address_keys(address: str, *, local: bool, delimiter: str) -> list[tuple[str, str]]:
    """The keys mail_addr_find tries, in order, each with the extension it drops."""
    localpart, domain = split_address(address.lower())
    base, ext = split_extension(localpart, delimiter)
    keys: list[tuple[str, str]] = []
    if domain:
        keys.append((f"{localpart}@{domain}", ""))
        if ext:
            keys.append((f"{base}@{domain}", ext))
    if local or not domain:
        keys.append((localpart, ""))
        if ext:
            keys.append((base, ext))
    if domain:
        keys.append((f"@{domain}", ext))
    return keys


def mail_addr_find(
    table: Mapping[str, Any], address: str, *, local: bool, delimiter: str
) -> Found | None:
    """Look ``address`` up in ``table`` in Postfix's order; None when absent."""
    if not table:
        return None
    for key, dropped in address_keys(address, local=local, delimiter=delimiter):
        if key in table:
            return Found(table[key], key, dropped)
    return None


def transport_keys(address: str, *, delimiter: str, parent_style: bool) -> list[str]:
    """transport(5) order: ``user+ext@domain``, ``user@domain``, ``domain``,
    each parent (``.parent``, or ``parent`` when transport_maps is listed in
    parent_domain_matches_subdomains), then ``*``."""
    localpart, domain = split_address(address.lower())
    base, ext = split_extension(localpart, delimiter)
    keys = [f"{localpart}@{domain}"]
    if ext:
        keys.append(f"{base}@{domain}")
    labels = domain.split(".")
    keys.append(domain)
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        keys.append(parent if parent_style else "." + parent)
    keys.append("*")
    return keys
