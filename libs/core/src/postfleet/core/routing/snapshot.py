"""The routing snapshot: Postfix's routing tables as one versioned JSON document.

Produced by the operator (Kubernetes) or by ``postfleet routes load`` / the
monolithic launcher from the ``routing:`` block of a config file; stored in
the NATS KV bucket ``postfleet-routing``; read live by every role.

Postfix parameters carried (defaults are Postfix's at compatibility_level
3.6): myhostname, mydomain, myorigin, mydestination, relay_domains,
virtual_alias_domains, virtual_alias_maps, virtual_mailbox_domains,
virtual_mailbox_maps, canonical_maps, sender_canonical_maps,
recipient_canonical_maps, alias_maps, relocated_maps, local_recipient_maps,
transport_maps, relayhost, default_transport, local_transport,
relay_transport, virtual_transport, mynetworks, recipient_delimiter,
propagate_unmatched_extensions, parent_domain_matches_subdomains,
append_at_myorigin, append_dot_mydomain, show_user_unknown_table_name,
virtual_alias_recursion_limit, virtual_alias_expansion_limit; and the smtp
client's per-destination table smtp_tls_policy_maps (the routing data it
shares with the operator's Transport resources).

Values use main.cf's ``$name`` / ``${name}`` expansion (also ``${name?text}``
and ``${name:text}``); ``parameters`` holds user-defined main.cf parameters
(``relay = relay.univ.es`` for ``relayhost = [$relay]``). An undefined name
expands to nothing, as in Postfix. Tables are mappings (a postmap'ed file's
content); a list entry that is exactly ``$some_maps`` names such a table, as
``virtual_alias_domains = $virtual_alias_maps`` does in Postfix.

Deliberate differences: local_recipient_maps defaults to empty (no check):
postfleet has no passwd table for Postfix's ``proxy:unix:passwd.byname
$alias_maps``. alias_maps defaults to empty (no /etc/aliases).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from postfleet.core.postfix_list import (
    OptionalPostfixList,
    PostfixList,
    postfix_list,
    split_list,
)
from postfleet.core.routing.tables import DomainList, domain_list

_EXPAND = re.compile(r"\$(?:\{(\w+)(?:([?:])([^}]*))?\}|(\w+))")
_TABLE_REF = re.compile(r"^\$(?:\{(\w+)\}|(\w+))$")


def _one_to_many(value: object) -> object:
    """virtual(5) values: addresses separated by commas and/or whitespace."""
    if isinstance(value, dict):
        return {k: postfix_list(v) for k, v in value.items()}
    return value


def _alias_values(value: object) -> object:
    """aliases(5) values: comma-separated ("|command args" may hold spaces)."""
    if isinstance(value, dict):
        return {
            k: [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v
            for k, v in value.items()
        }
    return value


OneToMany = Annotated[dict[str, list[str]], BeforeValidator(_one_to_many)]
AliasTable = Annotated[dict[str, list[str]], BeforeValidator(_alias_values)]

# Postfix 3.x (every compatibility level): the features where "example.com"
# also matches its subdomains. Of these only relay_domains and mynetworks
# (host names, unused here) concern routing; transport_maps and mydestination
# are not in the list, so they need explicit ".example.com" entries.
DEFAULT_PARENT_DOMAIN_MATCHES = [
    "debug_peer_list", "fast_flush_domains", "mynetworks", "permit_mx_backup_networks",
    "qmqpd_authorized_clients", "relay_domains", "smtpd_access_maps",
]

# Parameters that hold tables (mappings), usable as "$name" list entries.
TABLE_PARAMETERS = frozenset({
    "virtual_alias_maps", "virtual_mailbox_maps", "canonical_maps", "sender_canonical_maps",
    "recipient_canonical_maps", "alias_maps", "relocated_maps", "transport_maps",
})


class RoutingSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 0
    myhostname: str = "localhost.localdomain"
    mydomain: str = ""  # empty: $myhostname minus its first label
    myorigin: str = "$myhostname"
    mydestination: PostfixList = Field(
        default_factory=lambda: ["$myhostname", "localhost.$mydomain", "localhost"]
    )
    # compatibility_level >= 2: empty (was $mydestination).
    relay_domains: PostfixList = Field(default_factory=list)
    # None is Postfix's default: $virtual_alias_maps (a domain is a virtual
    # alias domain when that table has the bare domain as a key).
    virtual_alias_domains: OptionalPostfixList = None
    virtual_alias_maps: OneToMany = Field(default_factory=dict)
    # None is Postfix's default: $virtual_mailbox_maps.
    virtual_mailbox_domains: OptionalPostfixList = None
    virtual_mailbox_maps: dict[str, str] = Field(default_factory=dict)
    canonical_maps: dict[str, str] = Field(default_factory=dict)
    sender_canonical_maps: dict[str, str] = Field(default_factory=dict)
    recipient_canonical_maps: dict[str, str] = Field(default_factory=dict)
    alias_maps: AliasTable = Field(default_factory=dict)
    relocated_maps: dict[str, str] = Field(default_factory=dict)
    # Keys (user, user@domain, @domain) or "$alias_maps"-style table names;
    # empty: local recipients are not checked.
    local_recipient_maps: PostfixList = Field(default_factory=list)
    # key (user+ext@domain, user@domain, domain, .domain, *) -> "transport:nexthop"
    transport_maps: dict[str, str] = Field(default_factory=dict)
    # postfleet: per-destination concurrency for one next hop, keyed by the
    # transport_maps value it applies to ("smtp:[mail.example.org]:25" -> 5);
    # Postfix has it per transport (transport_destination_concurrency_limit).
    # Set by a Transport resource's spec.concurrencyLimit; qmgr falls back
    # to default_destination_concurrency_limit.
    destination_concurrency_limits: dict[str, int] = Field(default_factory=dict)
    # Postfix's smtp_tls_policy_maps: next-hop destination -> TLS policy
    # ("verify", "secure match=nexthop", "encrypt protocols=>=TLSv1.2"), keyed
    # as the smtp client looks it up: the verbatim next hop of transport_maps
    # or relayhost ("[mail.example.org]", "[10.0.0.1]:587"), or a recipient
    # domain ("example.org"; ".example.org" for its subdomains). A Transport
    # resource's spec.tls writes its next hop's entry.
    smtp_tls_policy_maps: dict[str, str] = Field(default_factory=dict)
    relayhost: str = ""
    default_transport: str = "smtp"
    local_transport: str = "local:$myhostname"
    relay_transport: str = "relay"
    virtual_transport: str = "virtual"
    # Postfix mynetworks_style=host (the default since compatibility 2) on a
    # laptop: the loopback addresses only.
    mynetworks: PostfixList = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    recipient_delimiter: str = ""
    propagate_unmatched_extensions: PostfixList = Field(
        default_factory=lambda: ["canonical", "virtual"]
    )
    parent_domain_matches_subdomains: PostfixList = Field(
        default_factory=lambda: list(DEFAULT_PARENT_DOMAIN_MATCHES)
    )
    append_at_myorigin: bool = True
    append_dot_mydomain: bool = False  # compatibility_level >= 1
    show_user_unknown_table_name: bool = True
    virtual_alias_recursion_limit: int = Field(default=1000, ge=1)
    virtual_alias_expansion_limit: int = Field(default=1000, ge=1)
    # User-defined main.cf parameters, only for $name expansion.
    parameters: dict[str, str] = Field(default_factory=dict)

    @field_validator("mynetworks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            if "$" not in net:
                ipaddress.ip_network(net.strip("[]").replace("]/", "/"), strict=False)
        return value

    @field_validator(
        "virtual_alias_maps", "virtual_mailbox_maps", "canonical_maps", "sender_canonical_maps",
        "recipient_canonical_maps", "alias_maps", "relocated_maps", "transport_maps",
        "smtp_tls_policy_maps",
    )
    @classmethod
    def _fold_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        # postmap folds keys to lower case; so do lookups.
        return {k.strip().lower(): v for k, v in value.items()}

    # -- $name expansion -------------------------------------------------
    def expand(self, value: str, _depth: int = 0) -> str:
        """Expand ``$name`` / ``${name}`` / ``${name?text}`` / ``${name:text}``.

        A name that holds a table stays as written (it is a table reference).
        """
        if "$" not in value or _depth > 20:
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(4)
            if name in TABLE_PARAMETERS:
                return m.group(0)
            raw = self.param(name)
            current = self.expand(raw, _depth + 1) if raw is not None else ""
            if m.group(2) == "?":
                return self.expand(m.group(3), _depth + 1) if current else ""
            if m.group(2) == ":":
                return self.expand(m.group(3), _depth + 1) if not current else ""
            return current

        return _EXPAND.sub(sub, value)

    def param(self, name: str) -> str | None:
        """A parameter's raw (unexpanded) value as main.cf text, or None."""
        if name == "mydomain" and not self.mydomain:
            return self._default_mydomain()
        if name in type(self).model_fields and name not in ("parameters", "version"):
            value = getattr(self, name)
            if value is None:  # virtual_*_domains default
                return "$" + name.replace("_domains", "_maps")
            if isinstance(value, bool):
                return "yes" if value else "no"
            if isinstance(value, list):
                return ", ".join(value)
            if isinstance(value, int | str):
                return str(value)
            return None
        return self.parameters.get(name)

    def _default_mydomain(self) -> str:
        # Postfix: $myhostname minus its first component.
        _, _, rest = self.expand(self.myhostname).partition(".")
        return rest or "localdomain"

    def expand_list(self, values: list[str]) -> list[str]:
        """Expanded, lower-cased list entries (table references kept as ``$name``)."""
        out: list[str] = []
        for v in values:
            out.extend(x.lower() for x in split_list(self.expand(v)))
        return out

    def table(self, name: str) -> dict[str, Any]:
        if name not in TABLE_PARAMETERS:
            raise KeyError(name)
        table: dict[str, Any] = getattr(self, name)
        return table

    def table_ref(self, entry: str) -> str | None:
        """``$virtual_alias_maps`` -> ``virtual_alias_maps``; None for other entries."""
        m = _TABLE_REF.match(entry.strip())
        name = (m.group(1) or m.group(2)) if m else None
        return name if name in TABLE_PARAMETERS else None

    def parent_style(self, feature: str) -> bool:
        return feature in self._parent_features

    def propagates(self, table_class: str) -> bool:
        """propagate_unmatched_extensions: canonical, virtual, alias, forward, include."""
        return table_class in self._propagating

    @cached_property
    def _parent_features(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.parent_domain_matches_subdomains))

    @cached_property
    def _propagating(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.propagate_unmatched_extensions))

    # -- precomputed views (the snapshot is immutable) --------------------
    def _domain_list(self, param: str, values: list[str] | None, *,
                     exact_only: bool = False) -> DomainList:
        if values is None:
            values = ["$" + param.replace("_domains", "_maps")]
        tables = []
        patterns = []
        for entry in self.expand_list(values):
            ref = self.table_ref(entry)
            if ref is not None:
                tables.append(self.table(ref))
            elif not entry.startswith("$"):
                patterns.append(entry)
        return domain_list(patterns, tables, parent_style=self.parent_style(param),
                           exact_only=exact_only)

    @cached_property
    def local_domain_list(self) -> DomainList:
        """mydestination (a domain list: ``.domain`` entries match subdomains)."""
        return self._domain_list("mydestination", self.mydestination)

    @cached_property
    def relay_domain_list(self) -> DomainList:
        """relay_domains (parent_domain_matches_subdomains: itself and subdomains)."""
        return self._domain_list("relay_domains", self.relay_domains)

    @cached_property
    def virtual_alias_domain_list(self) -> DomainList:
        """virtual_alias_domains: a string list in Postfix, exact names only."""
        return self._domain_list("virtual_alias_domains", self.virtual_alias_domains,
                                 exact_only=True)

    @cached_property
    def virtual_mailbox_domain_list(self) -> DomainList:
        return self._domain_list("virtual_mailbox_domains", self.virtual_mailbox_domains,
                                 exact_only=True)

    @cached_property
    def origin(self) -> str:
        return self.expand(self.myorigin).strip().lower()

    @cached_property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        nets = []
        for n in self.expand_list(self.mynetworks):
            try:
                nets.append(ipaddress.ip_network(n.strip("[]").replace("]/", "/"), strict=False))
            except ValueError:
                continue  # host names and tables in mynetworks are not supported
        return tuple(nets)

    def model_copy(self, *, update: Mapping[str, Any] | None = None,
                   deep: bool = False) -> RoutingSnapshot:
        """A copy; views computed from the old values are not carried over."""
        copied = super().model_copy(update=update, deep=deep)
        for name in _CACHED_VIEWS:
            copied.__dict__.pop(name, None)
        return copied

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RoutingSnapshot:
        return cls.model_validate_json(data)

    @classmethod
    def from_config(cls, data: dict[str, Any] | None, **defaults: Any) -> RoutingSnapshot:
        """Build from a config file's ``routing:`` block (plus e.g. myhostname)."""
        merged = {**defaults, **(data or {})}
        return cls.model_validate(merged)


_CACHED_VIEWS = tuple(
    name for name, value in vars(RoutingSnapshot).items() if isinstance(value, cached_property)
)
