"""Compile MailDomain and Transport resources into one routing snapshot: the
operator's postmap.

Pure: resources in, a ``RoutingSnapshot`` plus one outcome per resource out.
The set is validated as a whole, and a bad resource is left out and reported
without ever breaking the good ones. Conflicts are settled by precedence:
resources are taken in order, each checked against what is already accepted,
so the later one is rejected. The order is: incumbents first (in the snapshot
now, for their current generation), then by age (creationTimestamp, then
namespace/name). So a working route never disappears because someone added,
or edited another resource into, a conflicting one.

Postfix parameters written: mydestination (class local), relay_domains (class
relay), virtual_alias_domains + virtual_alias_maps (class virtualAlias and
its aliases), virtual_mailbox_domains (class virtualMailbox), transport_maps (one
entry per Transport, transport(5) syntax: ``transport:nexthop``, ``[host]``
for no MX lookup, an empty nexthop keeps the domain, ``error:text``). Read:
myhostname and the operator's own routing configuration (the base snapshot,
whose entries count as claimed). ``includeSubdomains`` adds Postfix's
``.domain`` form to mydestination / virtual_*_domains; relay_domains already
matches subdomains (parent_domain_matches_subdomains), so a relay domain is
listed once either way.

A Transport's ``tls`` is its next hop's smtp_tls_policy_maps entry (the level;
dane, dane-only and fingerprint are refused: the smtp client does not do
them, and a resource is Ready only when what it asks for is enforced). Its
``authSecretRef`` names a Secret whose key (``password`` by default) holds
``username:password``: that becomes the next hop's smtp_sasl_password_maps
entry, which is NOT put in the snapshot (the snapshot travels over NATS and
every role reads it) but returned apart (``Compiled.sasl_passwords``) for the
operator to write into the Secret the delivery role mounts. Both are keyed
as the smtp client looks them up: the next hop as written in transport_maps
(``[mail.example.org]:587``), or, without a nexthop, the matched domain
(``example.org``, ``.example.org``). The Secrets' contents are read by the
caller and passed in, so compiling stays pure.

A MailDomain's ``dkim`` ({selector, algorithm, secretRef}) names the Secret
holding its private DKIM key (key ``private.key`` by default). The key goes
into ``Compiled.dkim_keys`` under its DNS name
(``<selector>._domainkey.<domain>``), never into the snapshot, for the
operator to write into the Secret the chart mounts as cleanup's
dkim_key_directory; the domain's outcome carries the DKIM status (the TXT
record to publish, and whether it signs). A missing Secret or a key that is
not what ``algorithm`` says leaves the domain routed (mail still flows) but
not signing, with the reason in ``status.dkim``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from postfleet.core.mailauth import keys as dkim_keys
from postfleet.core.routing.snapshot import RoutingSnapshot

MAILDOMAIN = "MailDomain"
TRANSPORT = "Transport"

LOCAL = "local"
RELAY = "relay"
VIRTUAL_ALIAS = "virtualAlias"
VIRTUAL_MAILBOX = "virtualMailbox"
# class -> the Postfix parameter listing its domains
CLASS_PARAMETERS = {
    LOCAL: "mydestination",
    RELAY: "relay_domains",
    VIRTUAL_ALIAS: "virtual_alias_domains",
    VIRTUAL_MAILBOX: "virtual_mailbox_domains",
}

# Transports that take no host nexthop: the nexthop field is the reason text.
TEXT_TRANSPORTS = frozenset({"error", "discard"})
# Final delivery transports: a nexthop host is allowed (Postfix ignores it), a port is not.
LOCAL_TRANSPORTS = frozenset({"local", "virtual"})
# SMTP client transports: a nexthop that is this very system loops.
SMTP_TRANSPORTS = frozenset({"smtp", "relay"})

BASE_OWNER = "the operator's routing configuration"

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_TRANSPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LOCAL_PART = re.compile(r"^[^\s@,:;<>()\[\]\\\"]+$")

ResourceKey = tuple[str, str, str]  # (kind, namespace, name)
SecretKey = tuple[str, str]  # (namespace, name)
SecretData = Mapping[str, str] | str | None  # decoded data, a read error, or not found
# The TLS levels the smtp client enforces (CRD enum minus dane, dane-only, fingerprint).
TLS_LEVELS = ("none", "may", "encrypt", "verify", "secure")
DEFAULT_SECRET_KEY = "password"
DEFAULT_DKIM_KEY = "private.key"
DKIM_ALGORITHMS: dict[str, dkim_keys.KeyType] = {"rsa-sha256": "rsa",
                                                 "ed25519-sha256": "ed25519"}


@dataclass(frozen=True)
class Resource:
    """What the compiler needs of one custom resource."""

    kind: str  # MAILDOMAIN | TRANSPORT
    namespace: str
    name: str
    spec: Mapping[str, Any]
    created: str = ""  # metadata.creationTimestamp (RFC 3339 sorts as text)
    incumbent: bool = False  # accepted now, for this very generation

    @property
    def key(self) -> ResourceKey:
        return (self.kind, self.namespace, self.name)

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Outcome:
    """``error`` None: in the snapshot; ``notes``: accepted, with remarks."""

    error: str | None = None
    notes: tuple[str, ...] = ()
    # A MailDomain's status.dkim: selector, algorithm, dnsRecord, signing, message.
    dkim: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Compiled:
    snapshot: RoutingSnapshot
    outcomes: dict[ResourceKey, Outcome] = field(default_factory=dict)
    # smtp_sasl_password_maps entries (next hop -> username:password): never
    # in the snapshot.
    sasl_passwords: dict[str, str] = field(default_factory=dict)
    # DKIM private keys by file name <selector>._domainkey.<domain>: never in
    # the snapshot either.
    dkim_keys: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> dict[ResourceKey, str]:
        return {k: o.error for k, o in self.outcomes.items() if o.error is not None}


class Invalid(ValueError):
    """One resource is wrong; the message is what its status shows."""


def compile_routing(
    resources: Iterable[Resource], base: RoutingSnapshot | None = None,
    secrets: Mapping[SecretKey, SecretData] | None = None,
) -> Compiled:
    """Build the snapshot from ``base`` plus every acceptable resource.
    ``secrets``: the decoded data of the Secrets that Transports reference
    (None or absent: not found; a string: why it could not be read)."""
    tables = _Tables(base or RoutingSnapshot(), secrets or {})
    # MailDomains first: Transports' loop checks need the local domains.
    ordered = sorted(
        resources,
        key=lambda r: (r.kind != MAILDOMAIN, not r.incumbent, r.created, r.namespace, r.name),
    )
    outcomes: dict[ResourceKey, Outcome] = {}
    for res in ordered:
        try:
            if not isinstance(res.spec, Mapping):
                raise Invalid("spec must be a mapping")
            dkim = None
            if res.kind == MAILDOMAIN:
                notes = tables.add_maildomain(res)
                dkim = tables.add_dkim(res)
            elif res.kind == TRANSPORT:
                notes = tables.add_transport(res)
            else:
                raise Invalid(f"unknown kind {res.kind}")
        except Invalid as exc:
            outcomes[res.key] = Outcome(error=str(exc))
        else:
            outcomes[res.key] = Outcome(notes=tuple(notes), dkim=dkim)
    return Compiled(tables.snapshot(), outcomes, dict(sorted(tables.passwords.items())),
                    dict(sorted(tables.dkim_keys.items())))


# -- validation helpers -------------------------------------------------------
def check_domain(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} is required")
    domain = value.strip().lower().rstrip(".")
    if len(domain) > 253 or not all(_LABEL.match(label) for label in domain.split(".")):
        raise Invalid(f'{what} "{value}" is not a valid domain name')
    return domain


def check_address(value: object, what: str) -> str:
    """``local@domain``; returned lower-cased like Postfix table keys."""
    if not isinstance(value, str):
        raise Invalid(f"{what} must be a string")
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not _LOCAL_PART.match(local):
        raise Invalid(f'{what} "{value}" is not an address (user@domain)')
    return f"{local.lower()}@{check_domain(domain, what)}"


def check_match(value: object) -> str:
    """A transport(5) lookup key: ``*``, ``domain``, ``.domain`` or ``user@domain``."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("spec.match is required")
    text = value.strip()
    if text == "*":
        return text
    if "@" in text:
        if text.startswith("@"):
            raise Invalid(
                f'spec.match "{value}" is not a transport(5) key: '
                "use domain, .domain, user@domain or *"
            )
        return check_address(text, "spec.match")
    if text.startswith("."):
        return "." + check_domain(text[1:], "spec.match")
    return check_domain(text, "spec.match")


def _alias_key(key: object) -> str:
    """A virtual(5) key: ``user@domain`` or the catch-all ``@domain``, lower-cased."""
    try:
        if isinstance(key, str) and key.strip().startswith("@"):
            return "@" + check_domain(key.strip()[1:], "alias")
        return check_address(key, "alias")
    except Invalid:
        raise Invalid(f'alias "{key}" is not an address (user@domain or @domain)') from None


def _is_alias_target(text: str) -> bool:
    """``user@domain``, a bare ``user`` (Postfix appends $myorigin) or ``@domain``."""
    local, at, domain = text.rpartition("@")
    if not at:
        return bool(_LOCAL_PART.match(text))
    if local and not _LOCAL_PART.match(local):
        return False
    try:
        check_domain(domain, "target")
    except Invalid:
        return False
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _find_alias_loop(aliases: Mapping[str, list[str]], starts: Iterable[str]) -> list[str] | None:
    """A cycle of two or more virtual_alias_maps entries reachable from ``starts``.

    A target resolves to its exact entry, else to its domain's ``@domain``
    catch-all; ``@domain`` targets (domain rewrites) follow ``@domain``
    entries. An entry reaching itself is Postfix's self-reference (keep a
    copy), not a loop.
    """

    def successors(key: str) -> list[str]:
        out: list[str] = []
        for target in aliases.get(key, []):
            target = target.lower()
            domain = target.rpartition("@")[2]
            if target in aliases:
                nxt = target
            elif domain and f"@{domain}" in aliases:
                nxt = f"@{domain}"
            else:
                continue
            if nxt != key:
                out.append(nxt)
        return out

    done: set[str] = set()
    for start in starts:
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(successors(start)))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt in done:
                continue
            stack.append((nxt, iter(successors(nxt))))
            path.append(nxt)
            on_path.add(nxt)
    return None


class _Tables:
    """The tables under construction and who claimed each entry."""

    def __init__(
        self, base: RoutingSnapshot, secrets: Mapping[SecretKey, SecretData]
    ) -> None:
        self.base = base
        self.secrets = secrets
        self.tls: dict[str, str] = dict(base.smtp_tls_policy_maps)
        self.tls_owner: dict[str, str] = dict.fromkeys(self.tls, BASE_OWNER)
        self.passwords: dict[str, str] = {}
        self.dkim_keys: dict[str, str] = {}
        self.password_owner: dict[str, str] = {}
        # domain entry (domain or .domain) -> (class, owner)
        self.claims: dict[str, tuple[str, str]] = {}
        for cls, param in CLASS_PARAMETERS.items():
            for entry in base.expand_list(getattr(base, param) or []):
                self.claims.setdefault(entry, (cls, BASE_OWNER))
        self.added: dict[str, list[str]] = {cls: [] for cls in CLASS_PARAMETERS}
        self.aliases: dict[str, list[str]] = {
            k.lower(): list(v) for k, v in base.virtual_alias_maps.items()
        }
        self.alias_owner: dict[str, str] = dict.fromkeys(self.aliases, BASE_OWNER)
        self.transports: dict[str, str] = dict(base.transport_maps)
        self.limits: dict[str, int] = dict(base.destination_concurrency_limits)
        self.transport_owner: dict[str, str] = dict.fromkeys(self.transports, BASE_OWNER)

    # -- MailDomain -------------------------------------------------------------
    def add_maildomain(self, res: Resource) -> list[str]:
        spec = res.spec
        domain = check_domain(spec.get("domain"), "spec.domain")
        cls = spec.get("class")
        if cls not in CLASS_PARAMETERS:
            raise Invalid(
                "spec.class must be one of local, relay, virtualAlias, virtualMailbox"
                + (f' (got "{cls}")' if cls is not None else "")
            )
        include = spec.get("includeSubdomains", False)
        if not isinstance(include, bool):
            raise Invalid("spec.includeSubdomains must be true or false")
        notes: list[str] = []
        entries = [domain]
        if include and cls != RELAY:
            entries.append(f".{domain}")
        if cls == RELAY and not include and "includeSubdomains" in spec:
            notes.append(
                "relay_domains also matches subdomains (Postfix parent_domain_matches_subdomains)"
            )
        new_entries: list[str] = []
        for entry in entries:
            claim = self.claims.get(entry)
            if claim is None:
                new_entries.append(entry)
            elif claim != (cls, BASE_OWNER):
                other_cls, owner = claim
                raise Invalid(f'domain "{entry}" is already claimed by {owner} (class {other_cls})')

        if cls != VIRTUAL_ALIAS and res.spec.get("aliases"):
            raise Invalid("spec.aliases is only allowed with class virtualAlias")
        aliases = self._check_aliases(res, domain)
        if aliases:
            merged = {**self.aliases, **aliases}
            loop = _find_alias_loop(merged, aliases)
            if loop is not None:
                raise Invalid("alias loop: " + " -> ".join(loop))

        for entry in new_entries:
            self.claims[entry] = (cls, str(res))
            self.added[cls].append(entry)
        for key, targets in aliases.items():
            self.aliases[key] = targets
            self.alias_owner[key] = str(res)
        return notes

    def add_dkim(self, res: Resource) -> dict[str, Any] | None:
        """The domain's DKIM status; its key joins dkim_keys when it signs."""
        spec = res.spec.get("dkim")
        if spec is None:
            return None
        domain = check_domain(res.spec.get("domain"), "spec.domain")
        if not isinstance(spec, Mapping):
            return {"signing": False, "message": "spec.dkim must be a mapping"}
        selector = spec.get("selector")
        algorithm = spec.get("algorithm") or "rsa-sha256"
        status: dict[str, Any] = {"selector": selector, "algorithm": algorithm,
                                  "signing": False}
        ref = spec.get("secretRef")
        if not isinstance(selector, str) or dkim_keys.parse_name(
                f"{selector}._domainkey.{domain}") is None:
            return {**status, "message": f"spec.dkim.selector {selector!r} is not a selector"}
        if algorithm not in DKIM_ALGORITHMS:
            return {**status, "message": f"spec.dkim.algorithm {algorithm!r}: use "
                    + " or ".join(DKIM_ALGORITHMS)}
        if not (isinstance(ref, Mapping) and ref.get("name")):
            return {**status, "message": "spec.dkim.secretRef needs a name"}
        name, item = str(ref["name"]), str(ref.get("key") or DEFAULT_DKIM_KEY)
        data = self.secrets.get((res.namespace, name))
        where = f"Secret {res.namespace}/{name}"
        if data is None or isinstance(data, str) or item not in data:
            why = (f"{where} not found" if data is None else
                   f"{where} cannot be read: {data}" if isinstance(data, str) else
                   f'{where} has no key "{item}"')
            return {**status, "message": why + (" (spec.dkim.generate makes one)"
                                                if data is None else "")}
        private = data[item].encode()
        try:
            kind = dkim_keys.key_type(private)
            record = dkim_keys.dns_record(selector, domain, private)
        except dkim_keys.BadKey as exc:
            return {**status, "message": f'{where} key "{item}": {exc}'}
        if kind != DKIM_ALGORITHMS[algorithm]:
            return {**status, "message": f'{where} key "{item}" is an {kind} key, '
                    f"spec.dkim.algorithm is {algorithm}"}
        self.dkim_keys[dkim_keys.record_name(selector, domain)] = data[item]
        return {**status, "signing": True, "dnsRecord": record,
                "message": f"signing as {selector}._domainkey.{domain}: publish dnsRecord"}

    def _check_aliases(self, res: Resource, domain: str) -> dict[str, list[str]]:
        raw = res.spec.get("aliases") or {}
        if not isinstance(raw, Mapping):
            raise Invalid("spec.aliases must map addresses to lists of targets")
        out: dict[str, list[str]] = {}
        for key, targets in raw.items():
            normal = _alias_key(key)
            if normal.rpartition("@")[2] != domain:
                raise Invalid(f'alias "{key}" is outside domain "{domain}"')
            if isinstance(targets, str):
                targets = [targets]
            if not isinstance(targets, list) or not targets:
                raise Invalid(f'alias "{key}" needs at least one target')
            clean: list[str] = []
            for target in targets:
                if not isinstance(target, str) or not target.strip():
                    raise Invalid(f'alias "{key}" has an empty target')
                if not _is_alias_target(target.strip()):
                    raise Invalid(f'alias "{key}" target "{target}" is not an address')
                clean.append(target.strip())
            if normal in out:
                raise Invalid(f'alias "{key}" is listed twice')
            if normal in self.aliases:
                raise Invalid(f'alias "{normal}" is already defined by {self.alias_owner[normal]}')
            out[normal] = clean
        return out

    # -- Transport --------------------------------------------------------------
    def add_transport(self, res: Resource) -> list[str]:
        spec = res.spec
        match = check_match(spec.get("match"))
        transport = spec.get("transport")
        if not isinstance(transport, str) or not _TRANSPORT_NAME.match(transport):
            raise Invalid(
                "spec.transport is required"
                if not transport
                else f'spec.transport "{transport}" is not a master.cf service name'
            )
        value = f"{transport}:{self._nexthop(res, match, transport)}"
        limit = spec.get("concurrencyLimit")
        if limit is not None and not (_is_int(limit) and limit >= 1):
            raise Invalid("spec.concurrencyLimit must be a positive integer")
        nexthop = value.partition(":")[2]
        tls = self._tls(res, transport, match, nexthop)
        password = self._password(res, transport, match, nexthop)
        if match in self.transports:
            raise Invalid(f'match "{match}" is already routed by {self.transport_owner[match]}')
        self.transports[match] = value
        self.transport_owner[match] = str(res)
        for table, owners, entry in ((self.tls, self.tls_owner, tls),
                                     (self.passwords, self.password_owner, password)):
            if entry is not None:
                table[entry[0]] = entry[1]
                owners.setdefault(entry[0], str(res))
        notes = []
        if limit is not None:
            if value.endswith(":"):
                # No fixed next hop: the destination is each recipient's domain.
                notes.append("spec.concurrencyLimit needs spec.nexthop; "
                             "default_destination_concurrency_limit applies")
            else:
                # Two Transports to one next hop share it: the lower limit wins.
                self.limits[value] = min(limit, self.limits.get(value, limit))
        return notes

    def _destination(self, field: str, transport: str, match: str, nexthop: str) -> str:
        """The smtp_tls_policy_maps / smtp_sasl_password_maps key of a Transport."""
        if transport in TEXT_TRANSPORTS | LOCAL_TRANSPORTS or transport == "lmtp":
            raise Invalid(f"spec.{field} applies to SMTP transports only, not {transport}")
        if nexthop:
            return nexthop
        if match == "*" or "@" in match:
            raise Invalid(f'spec.{field} needs spec.nexthop when spec.match is "{match}"')
        return match

    @staticmethod
    def _claim(table: Mapping[str, str], owners: Mapping[str, str], key: str, value: str,
               what: str) -> None:
        if key in table and table[key] != value:
            raise Invalid(f'{what} for "{key}" is already set by {owners[key]}')

    def _tls(self, res: Resource, transport: str, match: str,
             nexthop: str) -> tuple[str, str] | None:
        level = res.spec.get("tls")
        if level is None:
            return None
        if level not in TLS_LEVELS:
            raise Invalid(f'spec.tls "{level}" is not enforced by the smtp client '
                          f"(it does {', '.join(TLS_LEVELS)})")
        key = self._destination("tls", transport, match, nexthop)
        self._claim(self.tls, self.tls_owner, key, level, "the TLS policy")
        return key, level

    def _password(self, res: Resource, transport: str, match: str,
                  nexthop: str) -> tuple[str, str] | None:
        ref = res.spec.get("authSecretRef")
        if ref is None:
            return None
        if not (isinstance(ref, Mapping) and ref.get("name")):
            raise Invalid("spec.authSecretRef needs a name")
        key = self._destination("authSecretRef", transport, match, nexthop)
        name, item = str(ref["name"]), str(ref.get("key") or DEFAULT_SECRET_KEY)
        data = self.secrets.get((res.namespace, name))
        where = f"Secret {res.namespace}/{name}"
        if data is None:
            raise Invalid(f"{where} (spec.authSecretRef) not found")
        if isinstance(data, str):
            raise Invalid(f"{where} (spec.authSecretRef) cannot be read: {data}")
        if item not in data:
            raise Invalid(f'{where} has no key "{item}"')
        credentials = data[item].strip()
        user, colon, _password = credentials.partition(":")
        if not colon or not user or any(c in credentials for c in "\r\n") or " " in user:
            raise Invalid(f'{where} key "{item}" must hold one line username:password')
        self._claim(self.passwords, self.password_owner, key, credentials, "SMTP AUTH")
        return key, credentials

    def _nexthop(self, res: Resource, match: str, transport: str) -> str:
        spec = res.spec
        raw = spec.get("nexthop") or {}
        if not isinstance(raw, Mapping):
            raise Invalid("spec.nexthop must be a mapping (host, port, mx)")
        host = raw.get("host") or ""
        port = raw.get("port")
        mx = raw.get("mx", True)
        message = spec.get("message")
        if message is not None and not isinstance(message, str):
            raise Invalid("spec.message must be a string")

        if transport in TEXT_TRANSPORTS:
            if host or port is not None:
                raise Invalid(
                    f"transport {transport} takes no nexthop: put the text in spec.message"
                )
            text = (message or "").strip()
            if "\n" in text or "\r" in text:
                raise Invalid("spec.message must be one line")
            return text
        if message:
            raise Invalid("spec.message is only used by the error and discard transports")

        if not isinstance(host, str):
            raise Invalid("nexthop.host must be a string")
        if not isinstance(mx, bool):
            raise Invalid("nexthop.mx must be true or false")
        if port is not None and not (_is_int(port) and 1 <= port <= 65535):
            raise Invalid(f"nexthop.port {port} is not a TCP port (1-65535)")
        if not host:
            if port is not None:
                raise Invalid("nexthop.port needs nexthop.host")
            if not mx:
                raise Invalid("nexthop.mx: false needs nexthop.host")
            return ""
        host = host.strip().lower()
        if host.startswith("ipv6:"):  # the CRD's spelling of an IPv6 address
            host = host[5:]
            if not _is_ip(host) or ":" not in host:
                raise Invalid(f'nexthop.host "ipv6:{host}" is not an IPv6 address')
        if _is_ip(host):
            if mx:
                raise Invalid(
                    f'nexthop.host "{host}" is an IP address: set nexthop.mx to false '
                    f"(Postfix [{host}])"
                )
        else:
            host = check_domain(host, "nexthop.host")
        if transport in LOCAL_TRANSPORTS and port is not None:
            raise Invalid(f"transport {transport} takes no nexthop.port")

        text = f"[{host}]" if not mx else host
        if port is not None:
            text += f":{port}"
        if transport in SMTP_TRANSPORTS and port in (None, 25) and self._is_myself(host):
            raise Invalid(
                f'nexthop "{text}" is this mail system: '
                f'mail for "{match}" would loop back to myself'
            )
        return text

    def _is_myself(self, host: str) -> bool:
        if _is_ip(host):
            return ipaddress.ip_address(host).is_loopback
        local = {d for d, (cls, _) in self.claims.items() if cls == LOCAL}
        return host in local or host in {
            self.base.expand(self.base.myhostname).lower(),
            "localhost",
        }

    # -- result -------------------------------------------------------------------
    def snapshot(self) -> RoutingSnapshot:
        update: dict[str, Any] = {}
        for cls, param in CLASS_PARAMETERS.items():
            current = getattr(self.base, param)
            # None is Postfix's default for virtual_*_domains ($virtual_*_maps:
            # the table's bare-domain keys). Once resources add domains the list
            # is explicit; set the base's domains explicitly to keep them.
            if current is not None or self.added[cls]:
                update[param] = [*(current or []), *sorted(self.added[cls])]
        update["virtual_alias_maps"] = dict(sorted(self.aliases.items()))
        update["transport_maps"] = dict(sorted(self.transports.items()))
        update["destination_concurrency_limits"] = dict(sorted(self.limits.items()))
        update["smtp_tls_policy_maps"] = dict(sorted(self.tls.items()))
        return RoutingSnapshot.model_validate({**self.base.model_dump(), **update})
