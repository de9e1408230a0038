"""The routing snapshot: Postfix's routing tables as one versioned JSON document.

Produced by the operator (Kubernetes) or by ``postfleet routes load`` / the
monolithic launcher from the ``routing:`` block of a config file; stored in
the NATS KV bucket ``postfleet-routing``; read live by every role.

Postfix parameters carried: myhostname, mydomain, myorigin, mydestination,
relay_domains, virtual_alias_domains, virtual_alias_maps,
virtual_mailbox_domains, virtual_mailbox_maps, canonical_maps, alias_maps,
relocated_maps, transport_maps, relayhost, default_transport,
local_transport, relay_transport, virtual_transport, mynetworks,
recipient_delimiter. Values may use ``$name`` expansion as in main.cf.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_EXPAND = re.compile(r"\$(\{(\w+)\}|(\w+))")


class RoutingSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 0
    myhostname: str = "localhost.localdomain"
    mydomain: str = ""
    myorigin: str = "$myhostname"
    # Postfix default: $myhostname, localhost.$mydomain, localhost
    mydestination: list[str] = Field(
        default_factory=lambda: ["$myhostname", "localhost.$mydomain", "localhost"]
    )
    # Postfix >= 3.0 (compatibility_level 2+): empty.
    relay_domains: list[str] = Field(default_factory=list)
    virtual_alias_domains: list[str] = Field(default_factory=list)
    virtual_alias_maps: dict[str, list[str]] = Field(default_factory=dict)
    virtual_mailbox_domains: list[str] = Field(default_factory=list)
    virtual_mailbox_maps: dict[str, str] = Field(default_factory=dict)
    canonical_maps: dict[str, str] = Field(default_factory=dict)
    sender_canonical_maps: dict[str, str] = Field(default_factory=dict)
    recipient_canonical_maps: dict[str, str] = Field(default_factory=dict)
    alias_maps: dict[str, list[str]] = Field(default_factory=dict)
    relocated_maps: dict[str, str] = Field(default_factory=dict)
    # key (user@domain, domain, .domain, *) -> "transport:nexthop"
    transport_maps: dict[str, str] = Field(default_factory=dict)
    relayhost: str = ""
    default_transport: str = "smtp"
    local_transport: str = "local:$myhostname"
    relay_transport: str = "relay"
    virtual_transport: str = "virtual"
    # Postfix mynetworks_style=host (the default since compatibility 2) on a
    # laptop: the loopback addresses only.
    mynetworks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    recipient_delimiter: str = ""

    @field_validator("mynetworks")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for net in value:
            ipaddress.ip_network(net.strip("[]").replace("]/", "/"), strict=False)
        return value

    # -- $name expansion -------------------------------------------------
    def expand(self, value: str, _depth: int = 0) -> str:
        """Expand ``$name`` / ``${name}`` against this snapshot's parameters."""
        if "$" not in value or _depth > 10:
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(2) or m.group(3)
            raw = self._param(name)
            return self.expand(raw, _depth + 1) if raw is not None else m.group(0)

        return _EXPAND.sub(sub, value)

    def _param(self, name: str) -> str | None:
        if name == "mydomain" and not self.mydomain:
            return self._default_mydomain()
        value = getattr(self, name, None) if name in type(self).model_fields else None
        if isinstance(value, list):
            return ", ".join(value)
        return value if isinstance(value, str) else None

    def _default_mydomain(self) -> str:
        # Postfix: $myhostname minus its first component.
        _, _, rest = self.myhostname.partition(".")
        return rest or "localdomain"

    def expand_list(self, values: list[str]) -> list[str]:
        out: list[str] = []
        for v in values:
            out.extend(x.strip().lower() for x in re.split(r"[,\s]+", self.expand(v)) if x.strip())
        return out

    # -- precomputed views (the snapshot is immutable) --------------------
    @cached_property
    def local_domains(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.mydestination))

    @cached_property
    def relay_domain_set(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.relay_domains))

    @cached_property
    def virtual_alias_domain_set(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.virtual_alias_domains))

    @cached_property
    def virtual_mailbox_domain_set(self) -> frozenset[str]:
        return frozenset(self.expand_list(self.virtual_mailbox_domains))

    @cached_property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(n.strip("[]").replace("]/", "/"), strict=False)
            for n in self.expand_list(self.mynetworks)
        )

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
