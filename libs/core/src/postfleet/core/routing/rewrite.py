"""Address rewriting: cleanup's canonical and virtual alias mapping, and
local(8)'s alias expansion. Pure functions of a routing snapshot.

Postfix parameters: sender_canonical_maps, recipient_canonical_maps,
canonical_maps, virtual_alias_maps, virtual_alias_recursion_limit,
virtual_alias_expansion_limit, alias_maps, propagate_unmatched_extensions,
recipient_delimiter, myorigin, mydestination.

- canonical (one-to-one, cleanup_map11): sender_canonical_maps then
  canonical_maps for the sender; recipient_canonical_maps then
  canonical_maps for each recipient. A result is looked up again, at most 10
  times; an address that maps to itself stops.
- virtual aliases (one-to-many, cleanup_map1n): every recipient, whatever its
  class, is replaced by its expansion, recursively. An address that appears
  in its own expansion is kept and not expanded again. More than
  virtual_alias_expansion_limit addresses, or a chain deeper than
  virtual_alias_recursion_limit, defers the message: "451 4.6.0 Alias
  expansion error". A loop (a -> b -> a) is such a chain; it is detected as
  soon as it closes instead of after 1000 lookups.
- table results: ``@otherdomain`` keeps the user (``@domain`` catch-all
  keys: "user@domain" -> "user@otherdomain"); a bare ``user`` gets
  ``@$myorigin``; an extension the key did not include is copied to each
  result (propagate_unmatched_extensions: canonical, virtual).
- aliases (local(8)'s alias_maps): only for recipients the local transport
  delivers; the key is the local part (``user+ext``, then ``user``). Address
  targets are routed again: local ones expand further, others go through
  canonical and virtual mapping as forwarded mail does. An alias that lists
  itself delivers to its own mailbox. ``/file``, ``|command`` and
  ``:include:`` targets are returned as written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from postfleet.core.routing.addresses import add_extension, split_address
from postfleet.core.routing.resolver import is_local_domain, resolve
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.tables import mail_addr_find
from postfleet.core.routing.trivial_rewrite import rewrite_local
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpError

log = logging.getLogger(__name__)

CANONICAL_RECURSION_LIMIT = 10  # cleanup_map11's MAX_RECURSION
VIRTUAL_ADDRESS_LENGTH_LIMIT = 1000  # virtual_alias_address_length_limit
ALIAS_DEPTH_LIMIT = 100  # local(8): deeper alias nesting is a forwarding loop
LOCAL_DELIVERY = "local"  # the master.cf service of local(8)


class AliasExpansionError(SmtpError):
    """The message cannot be accepted now: 451 4.6.0 Alias expansion error."""

    def __init__(self, detail: str) -> None:
        super().__init__(replies.ALIAS_EXPANSION_ERROR)
        self.detail = detail


def _split_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in value.replace(",", " ").split() if v]
    return [str(v) for v in value]


def mail_addr_map(
    snapshot: RoutingSnapshot, table: Mapping[str, Any], address: str, *, propagate: bool
) -> list[str] | None:
    """One table lookup with Postfix's result rewriting; None when no key matches."""
    if not table:
        return None
    _, domain = split_address(address)
    found = mail_addr_find(table, address, local=is_local_domain(snapshot, domain),
                           delimiter=snapshot.recipient_delimiter)
    if found is None:
        return None
    local = address.rpartition("@")[0] if "@" in address else address
    if found.unmatched_extension and local.lower().endswith(found.unmatched_extension.lower()):
        local = local[: len(local) - len(found.unmatched_extension)]
    out: list[str] = []
    for item in _split_values(found.value):
        if item.startswith("@"):
            item = local + item
        item = rewrite_local(snapshot, item)
        if propagate and found.unmatched_extension:
            item = add_extension(item, found.unmatched_extension)
        out.append(item)
    return out


def map11(snapshot: RoutingSnapshot, table: Mapping[str, Any], address: str,
          *, propagate: bool) -> str:
    """cleanup_map11: one-to-one mapping, repeated until the address stops changing."""
    for _ in range(CANONICAL_RECURSION_LIMIT):
        result = mail_addr_map(snapshot, table, address, propagate=propagate)
        if not result:
            return address
        if len(result) > 1:
            log.warning("multi-valued canonical entry for %s", address)
        if result[0].lower() == address.lower():
            return result[0]
        address = result[0]
    # Postfix warns and keeps the last result (the message is accepted).
    log.warning("unreasonable canonical map nesting for %s", address)
    return address


def canonical_sender(snapshot: RoutingSnapshot, sender: str) -> str:
    """The envelope sender after local rewriting and canonical mapping (<> stays <>)."""
    if not sender:
        return ""
    address = rewrite_local(snapshot, sender)
    propagate = snapshot.propagates("canonical")
    for table in (snapshot.sender_canonical_maps, snapshot.canonical_maps):
        address = map11(snapshot, table, address, propagate=propagate)
    return address


def canonical_recipient(snapshot: RoutingSnapshot, recipient: str) -> str:
    address = rewrite_local(snapshot, recipient)
    propagate = snapshot.propagates("canonical")
    for table in (snapshot.recipient_canonical_maps, snapshot.canonical_maps):
        address = map11(snapshot, table, address, propagate=propagate)
    return address


def expand_virtual(snapshot: RoutingSnapshot, address: str) -> list[str]:
    """cleanup_map1n over virtual_alias_maps; raises AliasExpansionError."""
    table = snapshot.virtual_alias_maps
    if not table:
        return [address]
    propagate = snapshot.propagates("virtual")
    out = [address]
    been_here: set[str] = set()  # addresses that expanded into themselves
    arg = 0
    while arg < len(out):
        if len(out) > snapshot.virtual_alias_expansion_limit:
            raise AliasExpansionError(f"unreasonable virtual_alias_maps expansion size for "
                                      f"{address}")
        chain: set[str] = set()
        count = 0
        while True:
            current = out[arg]
            key = current.lower()
            if key in been_here:
                break
            if count >= snapshot.virtual_alias_recursion_limit:
                raise AliasExpansionError(f"unreasonable virtual_alias_maps nesting for "
                                          f"{address}")
            if key in chain:
                # The same lookups would repeat until the recursion limit.
                raise AliasExpansionError(f"virtual_alias_maps loop for {address} at "
                                          f"{current}")
            chain.add(key)
            result = mail_addr_map(snapshot, table, current, propagate=propagate)
            if result is None:
                break
            grew = False
            for i, item in enumerate(result):
                if len(item) > VIRTUAL_ADDRESS_LENGTH_LIMIT:
                    raise AliasExpansionError(f"unreasonable virtual_alias_maps result for "
                                              f"{address}")
                if i == 0:
                    out[arg] = item
                else:
                    out.append(item)
                if item.lower() == key and key not in been_here:
                    been_here.add(key)  # allow an address to expand into itself once
                    grew = True
            if grew:
                chain.clear()
            count += 1
        arg += 1
    return out


def rewrite_recipient(snapshot: RoutingSnapshot, recipient: str) -> list[str]:
    """What cleanup queues for one envelope recipient: canonical, then virtual."""
    return expand_virtual(snapshot, canonical_recipient(snapshot, recipient))


def alias_lookup(snapshot: RoutingSnapshot, address: str) -> list[str] | None:
    """alias_maps entry for a local recipient (``user+ext``, then ``user``)."""
    table = snapshot.alias_maps
    if not table:
        return None
    local, _ = split_address(address)
    found = mail_addr_find(table, local, local=True, delimiter=snapshot.recipient_delimiter)
    return None if found is None else _split_alias_values(found.value)


def _split_alias_values(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def is_special_target(target: str) -> bool:
    return target.startswith(("|", "/", ":include:"))


def expand_aliases(snapshot: RoutingSnapshot, address: str) -> list[str]:
    """local(8)'s view of ``address``: where its mail finally goes."""
    return _dedupe(_expand_alias(snapshot, address, 0, frozenset()))


def _expand_alias(snapshot: RoutingSnapshot, address: str, depth: int,
                  seen: frozenset[str]) -> list[str]:
    key = address.lower()
    if key in seen or depth > ALIAS_DEPTH_LIMIT:
        return [address]  # a self-reference (or a loop) delivers to the mailbox
    if resolve(snapshot, address).transport != LOCAL_DELIVERY:
        return [address]
    targets = alias_lookup(snapshot, address)
    if targets is None:
        return [address]
    seen = seen | {key}
    out: list[str] = []
    for target in targets:
        if is_special_target(target):
            out.append(target)
            continue
        target = rewrite_local(snapshot, target)
        if resolve(snapshot, target).transport == LOCAL_DELIVERY:
            out.extend(_expand_alias(snapshot, target, depth + 1, seen))
        else:  # forwarded: through cleanup again
            for mapped in rewrite_recipient(snapshot, target):
                out.extend(_expand_alias(snapshot, mapped, depth + 1, seen))
    return out


def final_recipients(snapshot: RoutingSnapshot, address: str) -> list[str]:
    """Every rewriting step (canonical, virtual, aliases): ``sendmail -bv``'s answer."""
    out: list[str] = []
    for mapped in rewrite_recipient(snapshot, address):
        out.extend(expand_aliases(snapshot, mapped))
    return _dedupe(out)


def _dedupe(addresses: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for a in addresses:
        if a.lower() not in seen:
            seen.add(a.lower())
            out.append(a)
    return out
