"""``postfleet import-postfix DIR --out OUTDIR``: a Postfix main.cf and the
tables it names, as postfleet configuration.

Reads ``DIR/main.cf`` (Postfix syntax: ``name = value``, continuation lines
start with whitespace, ``#`` lines are comments, the last definition wins)
and every table it names with an indexed-file type (``hash:``, ``btree:``,
``texthash:``, ``lmdb:``, ``cdb:``, ``dbm:``, ``sdbm:``; ``proxy:`` is
transparent). A table's source file is looked up in DIR by its base name
(``hash:/etc/postfix/transport`` reads ``DIR/transport``), in postmap(1) /
postalias(1) text format, keys folded to lower case. ``unix:passwd.byname``
(local_recipient_maps) reads the user names of ``DIR/passwd`` when it exists.

Writes:

- ``OUTDIR/postfleet.yaml``: the routing snapshot's parameters under
  ``routing:`` (values keep their ``$name`` references; user-defined
  parameters such as ``relay = relay.univ.es`` go to ``routing.parameters``),
  the roles' Postfix parameters at the top level, and ``operator.routing``:
  the same routing minus what ``resources.yaml`` carries, so the operator's
  base configuration and the resources together make the same snapshot.
- ``OUTDIR/resources.yaml``: one MailDomain per domain of mydestination,
  relay_domains, virtual_alias_domains (with its virtual_alias_maps entries)
  and virtual_mailbox_domains, one Transport per transport_maps entry.

Everything not imported is reported (never silently dropped): parameters
postfleet does not support, table types it cannot read, entries the
resources cannot express, and compatibility_level below 3.6 (postfleet
always applies the 3.6 defaults: relay_domains empty, mynetworks_style host,
smtpd_relay_restrictions, append_dot_mydomain no). An unset
smtpd_relay_restrictions is written out as Postfix's default, which ends in
defer_unauth_destination (454 for relay attempts), where postfleet's own
default ends in reject_unauth_destination (554); the import says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postfleet.core.dicts import parse_table
from postfleet.core.postmap import INDEXED_TYPES
from postfleet.core.routing.snapshot import TABLE_PARAMETERS, RoutingSnapshot

ROUTING_STRINGS = frozenset({
    "myhostname", "mydomain", "myorigin", "relayhost", "default_transport",
    "local_transport", "relay_transport", "virtual_transport", "recipient_delimiter",
})
DOMAIN_LISTS = ("mydestination", "relay_domains", "virtual_alias_domains",
                "virtual_mailbox_domains")
ROUTING_LISTS = frozenset({
    *DOMAIN_LISTS, "mynetworks", "local_recipient_maps", "propagate_unmatched_extensions",
    "parent_domain_matches_subdomains",
})
ROUTING_BOOLS = frozenset({"append_at_myorigin", "append_dot_mydomain",
                           "show_user_unknown_table_name"})
ROUTING_INTS = frozenset({"virtual_alias_recursion_limit", "virtual_alias_expansion_limit"})
# table parameter -> text format of its source file
TABLE_FORMATS = {
    "transport_maps": "single", "virtual_alias_maps": "list", "virtual_mailbox_maps": "single",
    "canonical_maps": "single", "sender_canonical_maps": "single",
    "recipient_canonical_maps": "single", "relocated_maps": "single", "alias_maps": "aliases",
    "smtp_tls_policy_maps": "single",
}
RENAMED = {"virtual_maps": "virtual_alias_maps"}  # Postfix < 2.0 names

# Postfix parameters the roles read (top level of postfleet.yaml).
ROLE_PARAMETERS = frozenset({
    # ingress-smtp (smtpd)
    "message_size_limit", "line_length_limit", "smtpd_banner", "smtpd_error_sleep_time",
    "smtpd_forbid_bare_newline", "smtpd_forbid_bare_newline_exclusions",
    "smtpd_hard_error_limit", "smtpd_soft_error_limit", "smtpd_helo_required",
    "smtpd_peername_lookup", "smtpd_recipient_limit", "smtpd_recipient_overshoot_limit",
    "smtpd_recipient_restrictions", "smtpd_relay_restrictions", "smtpd_timeout",
    "smtpd_starttls_timeout", "smtpd_tls_cert_file", "smtpd_tls_key_file",
    "smtpd_tls_security_level", "smtpd_tls_protocols", "smtpd_tls_mandatory_protocols",
    "smtpd_tls_wrappermode", "smtpd_upstream_proxy_protocol", "smtpd_upstream_proxy_timeout",
    # cleanup
    "maximal_queue_lifetime", "bounce_queue_lifetime",
    # qmgr
    "queue_run_delay", "minimal_backoff_time", "maximal_backoff_time",
    "default_destination_concurrency_limit", "default_destination_recipient_limit",
    "qmgr_message_recipient_limit",
    # delivery (smtp, lmtp, local, virtual)
    "default_process_limit", "disable_dns_lookups", "smtp_dns_support_level",
    "smtp_host_lookup", "inet_protocols", "smtp_address_preference", "smtp_helo_name",
    "smtp_connect_timeout", "smtp_helo_timeout", "smtp_mail_timeout", "smtp_rcpt_timeout",
    "smtp_data_init_timeout", "smtp_data_done_timeout", "smtp_rset_timeout",
    "smtp_quit_timeout", "smtp_mx_address_limit", "smtp_mx_session_limit",
    "smtp_randomize_addresses", "smtp_connection_cache_time_limit",
    "smtp_connection_reuse_time_limit", "smtp_connection_reuse_count_limit",
    "lmtp_lhlo_name", "lmtp_connect_timeout", "lmtp_lhlo_timeout", "lmtp_mail_timeout",
    "lmtp_rcpt_timeout", "lmtp_data_init_timeout", "lmtp_data_done_timeout",
    "lmtp_quit_timeout", "lmtp_tcp_port", "mailbox_size_limit", "proxy_interfaces",
    "virtual_mailbox_base", "virtual_mailbox_limit",
    # delivery: outbound TLS and client SASL (smtp_tls_policy_maps is a routing table)
    "smtp_tls_security_level", "smtp_tls_CAfile", "smtp_tls_protocols",
    "smtp_tls_mandatory_protocols", "smtp_tls_verify_cert_match", "smtp_tls_secure_cert_match",
    "smtp_tls_loglevel", "smtp_starttls_timeout", "smtp_sasl_auth_enable",
    "smtp_sasl_password_maps", "smtp_sasl_security_options", "smtp_sasl_tls_security_options",
    "smtp_sasl_mechanism_filter", "smtp_sasl_auth_soft_bounce",
    # milters (ingress-smtp's smtpd_milters, cleanup's non_smtpd_milters)
    "smtpd_milters", "non_smtpd_milters", "milter_protocol", "milter_default_action",
    "milter_connect_timeout", "milter_command_timeout", "milter_content_timeout",
    "milter_connect_macros", "milter_helo_macros", "milter_mail_macros", "milter_rcpt_macros",
    "milter_data_macros", "milter_end_of_header_macros", "milter_end_of_data_macros",
    "milter_macro_daemon_name",
    # ESMTP extensions and notices (smtpd, qmgr's bounce daemon and flush)
    "smtputf8_enable", "smtpd_history_flush_threshold", "notify_classes",
    "error_notice_recipient", "double_bounce_sender", "bounce_notice_recipient",
    "2bounce_notice_recipient", "delay_notice_recipient", "bounce_size_limit",
    "delay_warning_time", "fast_flush_domains",
})
# Parameters that also belong to a role, besides the routing snapshot.
SHARED_WITH_ROLES = frozenset({"myhostname", "recipient_delimiter"})
# Accepted without effect, with the reason reported.
IGNORED = {
    "alias_database": "only newaliases(1) reads it; alias_maps is imported",
    "compatibility_level": "postfleet always applies compatibility_level 3.6 defaults",
}
LATEST_LEVEL = (3, 6)
# smtpd_relay_restrictions' default in Postfix from compatibility_level 1.
POSTFIX_RELAY_RESTRICTIONS = ("permit_mynetworks", "permit_sasl_authenticated",
                              "defer_unauth_destination")

_REF = re.compile(r"\$(?:\{(\w+)(?:[?:][^}]*)?\}|(\w+))")
_SPLIT = re.compile(r"[,\s]+")
_TRANSPORT_NAME = re.compile(r"^[a-z][a-z0-9-]*$")
_NAME_BAD = re.compile(r"[^a-z0-9.-]+")
API_VERSION = "postfleet.io/v1alpha1"


@dataclass
class ImportResult:
    source: Path
    config: dict[str, Any]
    resources: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def parse_main_cf(text: str, warn: list[str] | None = None) -> dict[str, str]:
    """``name = value`` pairs in file order (the last definition wins)."""
    params: dict[str, str] = {}
    current: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace():
            if current is None:
                if warn is not None:
                    warn.append(f"main.cf line {number}: continuation without a parameter")
                continue
            params[current] = f"{params[current]} {stripped}".strip()
            continue
        name, eq, value = raw.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"\w+", name):
            if warn is not None:
                warn.append(f"main.cf line {number}: not 'name = value': {stripped}")
            current = None
            continue
        params.pop(name, None)  # keep file order of the last definition
        params[name] = value.strip()
        current = name
    return params


def _refs(value: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _REF.finditer(value)]


def _bool(value: str) -> bool | str:
    lowered = value.strip().lower()
    if lowered in ("yes", "true"):
        return True
    if lowered in ("no", "false"):
        return False
    return value


class _Importer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.warnings: list[str] = []
        main_cf = directory / "main.cf"
        self.params = parse_main_cf(main_cf.read_text(encoding="utf-8"), self.warnings)
        for old, new in RENAMED.items():
            if old in self.params:
                value = self.params.pop(old)
                if new not in self.params:
                    self.params[new] = value
                    self.warnings.append(f"{old} is Postfix < 2.0's name of {new}: imported "
                                         f"as {new}")
        self.known = (set(RoutingSnapshot.model_fields) | ROLE_PARAMETERS | set(IGNORED)) \
            - {"version", "parameters"}
        referenced = {r for v in self.params.values() for r in _refs(v)}
        # A main.cf name postfleet does not know is user-defined when some
        # value refers to it ($relay); otherwise it is a parameter we do not support.
        self.user_params = {n: v for n, v in self.params.items()
                            if n not in self.known and n in referenced}

    def warn(self, text: str) -> None:
        self.warnings.append(text)

    # -- values -----------------------------------------------------------------
    def expand(self, value: str, depth: int = 0) -> str:
        """Fully expand against main.cf (for resources, which take no $name)."""
        if "$" not in value or depth > 20:
            return value

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2)
            if name in self.params:
                return self.expand(self.params[name], depth + 1)
            probe = RoutingSnapshot(**self._snapshot_scalars())
            raw = probe.param(name)
            return probe.expand(raw) if raw is not None else ""

        return _REF.sub(sub, value)

    def _snapshot_scalars(self) -> dict[str, Any]:
        return {k: self.params[k] for k in ("myhostname", "mydomain", "myorigin")
                if k in self.params}

    def check_refs(self, name: str, value: str) -> None:
        for ref in _refs(value):
            if ref in RoutingSnapshot.model_fields or ref in self.user_params:
                continue
            if ref in self.params:
                self.user_params[ref] = self.params[ref]
                self.warn(f"{name} refers to ${ref}, which postfleet does not use otherwise: "
                          f"its main.cf value is kept for $name expansion")
            else:
                self.warn(f"{name} refers to ${ref}, not set in main.cf and unknown to "
                          f"postfleet: it expands to nothing")

    def read_table(self, param: str, spec: str, fmt: str) -> dict[str, str] | None:
        """One ``type:/path`` table; None (with a warning) when it cannot be read."""
        kind, _, path = spec.partition(":")
        if kind == "proxy":
            return self.read_table(param, path, fmt)
        if kind not in INDEXED_TYPES:
            self.warn(f"{param}: table type {kind}: is not supported ({spec} not imported)")
            return None
        source = self.dir / Path(self.expand(path)).name
        if not source.exists():
            self.warn(f"{param}: {spec}: no {source.name} in {self.dir} (table not imported)")
            return None
        return parse_table(source.read_text(encoding="utf-8"), fmt)

    # -- the routing block --------------------------------------------------------
    def routing(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.params.items():
            if name in ROUTING_STRINGS:
                self.check_refs(name, value)
                out[name] = value
            elif name in ROUTING_BOOLS:
                out[name] = _bool(value)
            elif name in ROUTING_INTS:
                out[name] = int(value)
            elif name in TABLE_FORMATS:
                table = self.tables(name, value)
                if table is not None:
                    out[name] = table
            elif name == "local_recipient_maps":
                entries = self.local_recipient_maps(value)
                if entries is not None:
                    out[name] = entries
            elif name in ROUTING_LISTS:
                out[name] = self.plain_list(name, value)
        if "mynetworks_style" in self.params and "mynetworks" not in self.params:
            self.warn("mynetworks_style is not supported: set mynetworks (postfleet's "
                      "default is mynetworks_style = host: the loopback networks)")
        if self.user_params:
            out["parameters"] = dict(self.user_params)
        return out

    def tables(self, name: str, value: str) -> dict[str, Any] | None:
        merged: dict[str, Any] = {}
        read_any = False
        for spec in (s for s in _SPLIT.split(self.expand(value)) if s):
            table = self.read_table(name, spec, TABLE_FORMATS[name])
            if table is None:
                continue
            read_any = True
            for key, entry in table.items():
                merged.setdefault(key, entry)  # the first table with a key wins
        if not read_any:
            return None if value.strip() else {}
        if name in ("virtual_alias_maps", "alias_maps"):
            sep = "," if name == "alias_maps" else None
            return {k: [p.strip() for p in (v.split(sep) if sep else v.replace(",", " ").split())
                        if p.strip()] for k, v in merged.items()}
        return merged

    def plain_list(self, name: str, value: str) -> list[str]:
        out: list[str] = []
        for token in (t for t in _SPLIT.split(value.strip()) if t):
            if ":" in token and not token.startswith("[") and "/" in token.partition(":")[2] \
                    and name != "mynetworks":
                table = self.read_table(name, token, "single")
                if table is not None:
                    out.extend(table)  # a domain table: its keys are the domains
                continue
            if token.startswith("/"):
                source = self.dir / Path(token).name
                if source.exists():
                    out.extend(t for line in source.read_text().splitlines()
                               for t in _SPLIT.split(line.split("#", 1)[0]) if t)
                else:
                    self.warn(f"{name}: {token}: no {source.name} in {self.dir} (not imported)")
                continue
            if name == "mynetworks" and ":" in token and not token.startswith("["):
                if token.count(":") < 2:  # a table, not an IPv6 address
                    self.warn(f"mynetworks: {token} is not supported (not imported)")
                    continue
            self.check_refs(name, token)
            out.append(token)
        return out

    def local_recipient_maps(self, value: str) -> list[str] | None:
        entries: list[str] = []
        for token in (t for t in _SPLIT.split(value.strip()) if t):
            if token.startswith("$") and token.strip("${}") in TABLE_PARAMETERS:
                entries.append(token)
                continue
            kind, _, rest = token.partition(":")
            if kind == "proxy":
                kind, _, rest = rest.partition(":")
            if kind == "unix" and rest == "passwd.byname":
                passwd = self.dir / "passwd"
                if passwd.exists():
                    entries.extend(
                        line.split(":", 1)[0].strip().lower()
                        for line in passwd.read_text().splitlines()
                        if line.strip() and not line.startswith("#"))
                    continue
            elif kind in INDEXED_TYPES:
                table = self.read_table("local_recipient_maps", f"{kind}:{rest}", "single")
                if table is not None:
                    entries.extend(table)
                    continue
            self.warn(f"local_recipient_maps: {token} cannot be read (for unix:passwd.byname "
                      f"put a passwd file in {self.dir}): local recipients are not checked")
            return None
        return entries

    # -- the roles' parameters ----------------------------------------------------
    def role_parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.params.items():
            if name in SHARED_WITH_ROLES:
                out[name] = self.expand(value) if name == "myhostname" else value
            elif name in ROLE_PARAMETERS:
                text = _REF.sub(lambda m: self.expand(m.group(0))
                                if (m.group(1) or m.group(2)) in self.user_params
                                else m.group(0), value)
                for ref in _refs(text):
                    if ref not in ("myhostname", "mail_name"):
                        self.warn(f"{name} refers to ${ref}, which the roles do not expand")
                if name.endswith("_restrictions"):
                    out[name] = [t for t in _SPLIT.split(text.strip()) if t]
                elif text.isdigit():
                    out[name] = int(text)
                else:
                    out[name] = _bool(text)
        return out

    def relay_restrictions(self) -> dict[str, Any]:
        """Postfix's effective smtpd_relay_restrictions when main.cf leaves it
        at its default (compatibility_level 1 and up): relay attempts then
        get 454 (defer_unauth_destination) from Postfix, and keep getting it
        after the import; postfleet's own default answers 554."""
        if "smtpd_relay_restrictions" in self.params or self._level() < (1,):
            return {}
        self.warn("smtpd_relay_restrictions is not set: written out as Postfix's default ("
                  + ", ".join(POSTFIX_RELAY_RESTRICTIONS) + "), so relay attempts from "
                  "outside get 454 4.7.1 as from Postfix; postfleet's own default ends in "
                  "reject_unauth_destination (554 5.7.1)")
        return {"smtpd_relay_restrictions": list(POSTFIX_RELAY_RESTRICTIONS)}

    def _level(self) -> tuple[int, ...]:
        try:
            return tuple(int(p) for p in self.params.get("compatibility_level", "0").split("."))
        except ValueError:
            return (0,)

    def report_unsupported(self) -> None:
        if "myhostname" not in self.params:
            self.warn("myhostname is not set: Postfix would use the machine's name; the "
                      "resources use $myhostname = localhost.localdomain, the roles their "
                      "host's name")
        for name, value in self.params.items():
            if name in IGNORED and name != "compatibility_level":
                self.warn(f"{name} = {value}: ignored ({IGNORED[name]})")
            elif name not in self.known and name not in self.user_params:
                self.warn(f"{name} = {value}: not a parameter postfleet supports, and no "
                          f"other parameter refers to it (not imported)")
        level = self.params.get("compatibility_level")
        if level is None:
            self.warn("no compatibility_level: Postfix would run with level 0's "
                      "backwards-compatible defaults (e.g. relay_domains = $mydestination); "
                      "postfleet applies level 3.6's -- set such parameters explicitly "
                      "if the mail flow depends on them")
        else:
            if self._level() < LATEST_LEVEL:
                self.warn(f"compatibility_level = {level}: postfleet applies level 3.6's "
                          f"defaults (e.g. relay_domains is empty, not $mydestination)")


# -- resources ---------------------------------------------------------------------
def _resource_name(text: str, taken: set[str]) -> str:
    base = text.lower().replace("@", "-at-").replace("*", "default")
    if base.startswith("."):
        base = base[1:] + "-subdomains"
    base = _NAME_BAD.sub("-", base).replace(".", "-").strip("-") or "entry"
    base = base[:63].strip("-")
    name, n = base, 2
    while name in taken:
        name = f"{base[:59]}-{n}"
        n += 1
    taken.add(name)
    return name


def _nexthop(text: str) -> dict[str, Any] | None:
    """A transport(5) nexthop as the Transport CRD's ``nexthop``; None if not expressible."""
    if text.startswith("inet:"):
        text = text[5:]
    if "," in text or " " in text or text.startswith("unix:"):
        return None
    mx = True
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        mx = False
        port = rest[1:] if rest.startswith(":") else ""
        if host.lower().startswith("ipv6:"):
            host = "ipv6:" + host[5:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            host, port = text, ""
    spec: dict[str, Any] = {"host": host}
    if port:
        if not port.isdigit():
            return None
        spec["port"] = int(port)
    if not mx:
        spec["mx"] = False
    return spec


def build_resources(imp: _Importer, snapshot: RoutingSnapshot,
                    routing: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """MailDomain/Transport resources, and the operator's base routing block."""
    names: dict[str, set[str]] = {"MailDomain": set(), "Transport": set()}
    domains: list[dict[str, Any]] = []
    claimed: dict[str, str] = {}
    base = dict(routing)
    aliases = dict(snapshot.virtual_alias_maps)
    attached: set[str] = set()

    def add_domain(domain: str, cls: str, include: bool, param: str) -> None:
        if domain in claimed:
            imp.warn(f"{param}: {domain} is already a {claimed[domain]} domain: no "
                     f"MailDomain resource for it (Postfix takes the first class)")
            return
        claimed[domain] = cls
        spec: dict[str, Any] = {"domain": domain, "class": cls}
        if include:
            spec["includeSubdomains"] = True
        if cls == "virtualAlias":
            mine = {k: v for k, v in aliases.items()
                    if "@" in k and k.rpartition("@")[2] == domain}
            if mine:
                spec["aliases"] = mine
                attached.update(mine)
        domains.append({"apiVersion": API_VERSION, "kind": "MailDomain",
                        "metadata": {"name": _resource_name(domain, names["MailDomain"])},
                        "spec": spec})

    classes = (("mydestination", "local"), ("virtual_alias_domains", "virtualAlias"),
               ("virtual_mailbox_domains", "virtualMailbox"), ("relay_domains", "relay"))
    for param, cls in classes:
        values = getattr(snapshot, param)
        if values is None:  # Postfix default: domains that are keys of the table
            table = snapshot.table(param.replace("_domains", "_maps"))
            entries = [k for k in table if "@" not in k and "." in k]
        else:
            entries = snapshot.expand_list(values)
        plain = [e for e in entries if not e.startswith(("$", "!"))]
        for e in entries:
            if e.startswith("!"):
                imp.warn(f"{param}: exclusion {e} cannot be a resource (kept in "
                         f"operator.routing)")
        dotted = {e[1:] for e in plain if e.startswith(".")}
        for entry in plain:
            if entry.startswith("."):
                if entry[1:] not in plain:
                    imp.warn(f"{param}: {entry} (subdomains only) becomes a {cls} "
                             f"MailDomain for {entry[1:]} and its subdomains")
                    add_domain(entry[1:], cls, True, param)
                continue
            include = entry in dotted or (cls == "relay" and snapshot.parent_style(param))
            add_domain(entry, cls, include, param)
        if values is not None:
            # What no resource carries: table references and exclusions.
            base[param] = [v for v in values
                           if snapshot.table_ref(v) is not None or v.strip().startswith("!")]
    for key in aliases:
        if key not in attached and "@" not in key and "." in key \
                and claimed.get(key) == "virtualAlias":
            attached.add(key)  # "example.com anything": the domain line itself
    leftover = {k: v for k, v in aliases.items() if k not in attached}
    for key in leftover:
        imp.warn(f"virtual_alias_maps: {key} is not in a virtual alias domain: kept in "
                 f"operator.routing (no MailDomain carries it)")
    if "virtual_alias_maps" in base or leftover:
        base["virtual_alias_maps"] = leftover
    if snapshot.virtual_mailbox_maps:
        imp.warn("virtual_mailbox_maps has no resource form: kept in operator.routing")

    transports: list[dict[str, Any]] = []
    kept: dict[str, str] = {}
    for key, value in snapshot.transport_maps.items():
        expanded = imp.expand(value)
        transport, _, nexthop = expanded.partition(":")
        transport, nexthop = transport.strip(), nexthop.strip()
        spec: dict[str, Any] = {"match": key, "transport": transport}
        problem = None
        if not transport:
            problem = "an empty transport (':nexthop') has no resource form"
        elif not _TRANSPORT_NAME.match(transport):
            problem = f"transport name {transport!r} is not a resource name"
        elif transport in ("error", "discard"):
            if nexthop:
                spec["message"] = nexthop
        elif nexthop:
            hop = _nexthop(nexthop)
            if hop is None:
                problem = f"nexthop {nexthop!r} has no resource form"
            else:
                spec["nexthop"] = hop
        if problem:
            imp.warn(f"transport_maps: {key} {value}: {problem} (kept in operator.routing)")
            kept[key] = value
            continue
        transports.append({"apiVersion": API_VERSION, "kind": "Transport",
                           "metadata": {"name": _resource_name(key, names["Transport"])},
                           "spec": spec})
    if "transport_maps" in base:
        base["transport_maps"] = kept
    return domains + transports, base


def import_postfix(directory: Path) -> ImportResult:
    if not (directory / "main.cf").exists():
        raise ValueError(f"no main.cf in {directory}")
    imp = _Importer(directory)
    routing = imp.routing()
    roles = imp.role_parameters()
    imp.report_unsupported()
    roles.update(imp.relay_restrictions())
    snapshot = RoutingSnapshot.from_config(routing)
    resources, base = build_resources(imp, snapshot, routing)
    config: dict[str, Any] = dict(roles)
    config["routing"] = routing
    config["operator"] = {"routing": base}
    return ImportResult(directory, config, resources, imp.warnings)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: plain YAML
        return True


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)


def write_outputs(result: ImportResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    header = (f"# Generated by `postfleet import-postfix {result.source}`.\n"
              + "".join(f"# note: {w}\n" for w in result.warnings))
    config_path = out / "postfleet.yaml"
    config_path.write_text(header + _yaml(result.config), encoding="utf-8")
    resources_path = out / "resources.yaml"
    docs = "---\n".join(_yaml(r) for r in result.resources)
    resources_path.write_text(
        f"# Generated by `postfleet import-postfix {result.source}`.\n"
        "# MailDomain and Transport resources; the operator's base configuration\n"
        "# is the `operator.routing` block of the postfleet.yaml next to this file.\n"
        + docs,
        encoding="utf-8")
    return [config_path, resources_path]

