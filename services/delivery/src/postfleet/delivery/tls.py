"""Outbound TLS for the smtp client: which policy a destination gets, the SSL
contexts for it, and whether a server's certificate satisfies it (Postfix's
smtp_tls_policy.c and tls_verify.c, with Python's ssl doing the TLS).

Policy, first match wins (as Postfix with smtp_tls_policy_maps listing an
MTA-STS policy server last):

1. smtp_tls_policy_maps (a table of the routing snapshot, so a Transport
   resource's spec.tls lands there): looked up by the verbatim next hop
   (``[mail.example.org]``, ``[10.1.1.1]:587``), by its canonical form
   without a default port, and for a domain found by MX lookup also by its
   parent domains (``.example.org``), as Postfix does;
2. MTA-STS (mtasts.py) for a domain found by MX lookup, when enabled;
3. smtp_tls_security_level.

Levels, with Postfix's outcomes:

- none: never STARTTLS.
- may: STARTTLS when offered, certificate not checked; a refused STARTTLS
  goes on in clear text, and a failed handshake is retried once on the same
  server in clear text (not when SASL credentials would then go out in the
  clear: 4.7.5 "Cannot start TLS: handshake failure", as Postfix does).
- encrypt: TLS required, certificate not checked. STARTTLS not offered: 4.7.4
  "TLS is required, but was not offered by host …"; refused: "TLS is
  required, but host … refused to start TLS: <reply>"; a failed handshake:
  4.7.5 "Cannot start TLS: handshake failure".
- verify, secure: encrypt, plus the chain must verify against
  smtp_tls_CAfile (or the system's CAs) and a certificate name must match
  smtp_tls_verify_cert_match / smtp_tls_secure_cert_match (or the entry's
  ``match=``); else 4.7.5 "Server certificate not verified".

Table entries: ``level [match=a:b] [protocols=…]`` (other Postfix
attributes such as ``ciphers=`` or ``tafile=`` are refused, not silently
ignored: the destination is deferred 4.7.5 until the entry is fixed). The
levels dane, dane-only and fingerprint are not implemented and refused the
same way.

A session's TLS facts are logged as Postfix logs them at smtp_tls_loglevel 1:
``Verified TLS connection established to mx[192.0.2.1]:25: TLSv1.3 with
cipher TLS_AES_256_GCM_SHA384 (256/256 bits)`` ("Untrusted" when the
certificate was not checked; Python's ssl does not tell the key exchange or
signature, so those parts are left out).

Why name matching is written here: Python's ssl checks one server name per
handshake, while Postfix's policies accept any of several (``nexthop,
dot-nexthop``, a list from ``match=``), so the chain is verified by ssl and
the names afterwards, with RFC 6125 wildcards (``*`` as a whole left-most
label).

Postfix parameters: smtp_tls_security_level, smtp_tls_policy_maps,
smtp_tls_CAfile, smtp_tls_protocols, smtp_tls_mandatory_protocols,
smtp_tls_verify_cert_match, smtp_tls_secure_cert_match, smtp_tls_loglevel.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from postfleet.core.routing.nexthop import SMTP_PORT, Nexthop
from postfleet.delivery.settings import DeliverySettings

NONE, MAY, ENCRYPT, VERIFY, SECURE = "none", "may", "encrypt", "verify", "secure"
LEVELS = (NONE, MAY, ENCRYPT, VERIFY, SECURE)
NOT_IMPLEMENTED = ("dane", "dane-only", "fingerprint")
ATTRIBUTES = ("match", "protocols")

NOT_OFFERED = "TLS is required, but was not offered by host {label}"
REFUSED = "TLS is required, but host {label} refused to start TLS: {reply}"
HANDSHAKE = "Cannot start TLS: handshake failure"
NOT_VERIFIED = "Server certificate not verified"
POLICY_ERROR = "TLS policy lookup for {dest}: {error}"

_VERSIONS = {
    "sslv2": None, "sslv3": ssl.TLSVersion.SSLv3, "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1, "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_ORDER = [ssl.TLSVersion.SSLv3, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1,
          ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


class PolicyError(ValueError):
    """A policy that cannot be applied (bad table entry or parameter)."""


@dataclass(frozen=True, slots=True)
class Protocols:
    minimum: ssl.TLSVersion
    maximum: ssl.TLSVersion


def parse_protocols(text: str) -> Protocols:
    """Postfix's protocol syntax: ``>=TLSv1.2``, ``<=TLSv1.2``, ``!TLSv1,
    !TLSv1.1`` (exclusions that leave one contiguous range), or names."""
    low, high = 0, len(_ORDER) - 1
    included: set[int] = set()
    excluded: set[int] = set()
    for word in text.replace(",", " ").replace(":", " ").split():
        op = ">=" if word.startswith(">=") else "<=" if word.startswith("<=") else (
            "!" if word.startswith("!") else "")
        name = word[len(op):].lower()
        if name not in _VERSIONS:
            raise PolicyError(f"unknown TLS protocol {word!r}")
        version = _VERSIONS[name]
        if version is None:  # SSLv2: nothing speaks it any more
            continue
        index = _ORDER.index(version)
        if op == ">=":
            low = max(low, index)
        elif op == "<=":
            high = min(high, index)
        elif op == "!":
            excluded.add(index)
        else:
            included.add(index)
    allowed = [i for i in range(low, high + 1)
               if i not in excluded and (not included or i in included)]
    if not allowed or allowed != list(range(allowed[0], allowed[-1] + 1)):
        raise PolicyError(f"TLS protocols {text!r} leave no contiguous range")
    return Protocols(_ORDER[allowed[0]], _ORDER[allowed[-1]])


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """One destination's TLS policy. ``match`` is only for verify/secure;
    ``mx`` (MTA-STS enforce) lists the MX host patterns that may be used."""

    level: str = NONE
    match: tuple[str, ...] = ()
    protocols: str = ""  # "": the level's default parameter
    source: str = ""  # where it came from, for the log
    mx: tuple[str, ...] = field(default=())

    @property
    def required(self) -> bool:
        return self.level in (ENCRYPT, VERIFY, SECURE)

    @property
    def verifies(self) -> bool:
        return self.level in (VERIFY, SECURE)

    @property
    def key(self) -> str:
        """What sessions opened under this policy have in common (connection cache)."""
        return f"{self.level}/{':'.join(self.match)}/{self.protocols}/{':'.join(self.mx)}"


def parse_policy(value: str, source: str = "smtp_tls_policy_maps") -> TlsPolicy:
    """A table entry: ``level [match=a:b] [protocols=…]``."""
    words = value.split()
    if not words:
        raise PolicyError("empty TLS policy")
    level = words[0].lower()
    if level in NOT_IMPLEMENTED:
        raise PolicyError(f"TLS security level {level!r} is not implemented")
    if level not in LEVELS:
        raise PolicyError(f"unknown TLS security level {level!r}")
    attrs: dict[str, str] = {}
    for word in words[1:]:
        name, eq, attr = word.partition("=")
        name = name.lower()
        if not eq or name not in ATTRIBUTES:
            raise PolicyError(f"TLS policy attribute {word!r} is not supported")
        if name in attrs:
            raise PolicyError(f"TLS policy attribute {name!r} given twice")
        attrs[name] = attr
    if "match" in attrs and level not in (VERIFY, SECURE):
        raise PolicyError(f"match= needs level verify or secure, not {level}")
    if "protocols" in attrs:
        parse_protocols(attrs["protocols"])
    match = tuple(m for m in attrs.get("match", "").lower().split(":") if m)
    return TlsPolicy(level, match, attrs.get("protocols", ""), source)


def policy_keys(verbatim: str, nexthop: Nexthop) -> list[str]:
    """smtp_tls_policy_maps keys for a next hop, most specific first."""
    host = nexthop.host.lower().rstrip(".")
    port = "" if nexthop.port == SMTP_PORT else f":{nexthop.port}"
    canonical = f"[{host}]{port}" if nexthop.literal else f"{host}{port}"
    keys = [verbatim.strip().lower(), canonical]
    if not nexthop.literal and not port:
        labels = host.split(".")
        keys += ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    return list(dict.fromkeys(k for k in keys if k))


def table_policy(table: Mapping[str, str], verbatim: str, nexthop: Nexthop) -> TlsPolicy | None:
    """The smtp_tls_policy_maps entry for a next hop; PolicyError when it is bad."""
    for key in policy_keys(verbatim, nexthop):
        value = table.get(key)
        if value is not None:
            try:
                return parse_policy(value, f"smtp_tls_policy_maps entry {key}")
            except PolicyError as exc:
                raise PolicyError(f"{key} {value!r}: {exc}") from None
    return None


# -- SSL contexts ------------------------------------------------------------------


class Contexts:
    """The client SSL contexts, one per (verifying, protocol range), made once."""

    def __init__(self, cafile: str, protocols: str, mandatory_protocols: str) -> None:
        self.cafile = cafile
        self.protocols = parse_protocols(protocols)
        self.mandatory = parse_protocols(mandatory_protocols)
        self._made: dict[tuple[bool, Protocols], ssl.SSLContext] = {}

    def for_policy(self, policy: TlsPolicy) -> ssl.SSLContext:
        if policy.protocols:
            protocols = parse_protocols(policy.protocols)
        else:
            protocols = self.mandatory if policy.required else self.protocols
        return self.get(policy.verifies, protocols)

    def get(self, verify: bool, protocols: Protocols | None = None) -> ssl.SSLContext:
        protocols = protocols or self.mandatory
        key = (verify, protocols)
        context = self._made.get(key)
        if context is None:
            context = self._made[key] = self._make(verify, protocols)
        return context

    def _make(self, verify: bool, protocols: Protocols) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # Names are matched afterwards (match_certificate): several may do.
        context.check_hostname = False
        if verify:
            context.verify_mode = ssl.CERT_REQUIRED
            if self.cafile:
                context.load_verify_locations(cafile=self.cafile)
            else:
                context.load_default_certs()
        else:
            context.verify_mode = ssl.CERT_NONE
        # Never below Python's own floor (TLSv1.2): asking for less only warns.
        try:
            if _ORDER.index(protocols.minimum) > _ORDER.index(ssl.TLSVersion.TLSv1_2):
                context.minimum_version = protocols.minimum
            if protocols.maximum != ssl.TLSVersion.TLSv1_3:
                context.maximum_version = protocols.maximum
        except (ValueError, ssl.SSLError) as exc:
            raise PolicyError(f"TLS protocols not available here: {exc}") from None
        return context

    def verifying(self) -> ssl.SSLContext:
        """A context that checks chain and host name (MTA-STS's HTTPS)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname on
        if self.cafile:
            context.load_verify_locations(cafile=self.cafile)
        else:
            context.load_default_certs()
        return context


# -- certificate names ---------------------------------------------------------------


def certificate_names(peercert: Mapping[str, Any]) -> list[str]:
    """The DNS names of a (verified) certificate: its subjectAltName dNSNames,
    or its subject CN when it has none (RFC 6125 6.4.4)."""
    names = [v for k, v in peercert.get("subjectAltName", ()) if k == "DNS"]
    if names:
        return [n.lower().rstrip(".") for n in names]
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.append(str(value).lower().rstrip("."))
    return names


def name_matches(cert_name: str, wanted: str) -> bool:
    """Does the certificate name cover ``wanted``? ``wanted`` ".example.org"
    stands for any subdomain; a certificate "*.example.org" covers one label."""
    if wanted.startswith("."):
        if cert_name.startswith("*."):
            return cert_name[1:].endswith(wanted) or cert_name[1:] == wanted
        return cert_name.endswith(wanted) and len(cert_name) > len(wanted)
    if cert_name.startswith("*."):
        first, dot, rest = wanted.partition(".")
        return bool(first) and bool(dot) and rest == cert_name[2:]
    return cert_name == wanted


def wanted_names(strategies: Iterable[str], hostname: str, nexthop_domain: str) -> list[str]:
    """Postfix's match strategies turned into names (or ".domain" patterns)."""
    out: list[str] = []
    for strategy in strategies:
        strategy = strategy.lower().rstrip(".")
        if strategy == "hostname":
            out.append(hostname.lower().rstrip("."))
        elif strategy == "nexthop":
            out.append(nexthop_domain.lower().rstrip("."))
        elif strategy == "dot-nexthop":
            out.append("." + nexthop_domain.lower().rstrip("."))
        elif strategy:
            out.append(strategy)
    return out


def match_certificate(peercert: Mapping[str, Any], wanted: Sequence[str]) -> bool:
    names = certificate_names(peercert)
    return any(name_matches(n, w) for n in names for w in wanted)


def mx_listed(hostname: str, patterns: Sequence[str]) -> bool:
    """RFC 8461 4.1: an MX host name against a policy's "mx" patterns."""
    host = hostname.lower().rstrip(".")
    return any(name_matches(p.lower().rstrip("."), host) for p in patterns)


def summary(trust: str, relay: str, ssl_object: ssl.SSLObject | None) -> str:
    """Postfix's tls_log_summary for a new client session."""
    version = ssl_object.version() if ssl_object is not None else None
    cipher = ssl_object.cipher() if ssl_object is not None else None
    name, bits = (cipher[0], cipher[2]) if cipher else ("unknown", 0)
    return (f"{trust} TLS connection established to {relay}: {version or 'unknown'} "
            f"with cipher {name} ({bits}/{bits} bits)")


# -- the policy in force for a next hop ------------------------------------------------


class StsSource(Protocol):
    async def enforced_mx(self, domain: str) -> tuple[str, ...] | None:
        """The MX patterns of the domain's MTA-STS policy in enforce mode, or None."""
        ...


class TlsPolicies:
    """smtp_tls_policy_maps (from ``table``, the live routing snapshot's),
    then MTA-STS (``sts``, when enabled), then smtp_tls_security_level."""

    def __init__(
        self, settings: DeliverySettings, table: Callable[[], Mapping[str, str]],
        sts: StsSource | None = None,
    ) -> None:
        self.table = table
        self.sts = sts
        self.default = TlsPolicy(settings.smtp_tls_security_level or NONE,
                                 source="smtp_tls_security_level")
        self.matches = {VERIFY: tuple(settings.smtp_tls_verify_cert_match),
                        SECURE: tuple(settings.smtp_tls_secure_cert_match)}

    async def lookup(self, verbatim: str, nexthop: Nexthop) -> TlsPolicy:
        """The policy for a next hop; PolicyError when its table entry is bad."""
        policy = table_policy(self.table(), verbatim, nexthop)
        if policy is None and self.sts is not None and not nexthop.literal:
            mx = await self.sts.enforced_mx(nexthop.host)
            if mx is not None:
                domain = nexthop.host.lower().rstrip(".")
                policy = TlsPolicy(VERIFY, ("hostname",), source=f"MTA-STS policy of {domain}",
                                   mx=mx)
        policy = policy or self.default
        if policy.verifies and not policy.match:
            policy = replace(policy, match=self.matches[policy.level])
        return policy
