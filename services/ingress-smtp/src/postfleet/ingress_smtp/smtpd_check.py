"""ingress-smtp: the restriction lists (Postfix smtpd_check.c): client, HELO,
sender, relay, recipient, DATA and end-of-data restrictions, evaluated as
Postfix evaluates them.

Each list runs in order; the first restriction that decides ends that list:
``permit``-like ones let the next list run, ``reject``/``defer``-like ones
answer the client, and a list that decides nothing permits. With
``smtpd_delay_reject = yes`` (the default) the client, HELO and sender lists
run at RCPT time, in front of the relay and recipient lists, so that a
client refused for its address still hears which recipient it tried;
``no`` runs each list at its own command (client: instead of the banner,
and every command but QUIT then gets ``503 5.7.0 Error: access denied for
NAME[IP]``). ``defer_if_permit`` (and a DNS lookup that failed for a
moment) turns the final "permit" of the RCPT lists into ``450``.

Restrictions (Postfix's names, replies and default codes):

- generic: permit, reject (554 5.7.1 "<what>: CLASS rejected: Access denied"),
  defer (450 4.7.1), defer_if_permit, permit_mynetworks,
  permit_sasl_authenticated, reject_unauth_pipelining (503 5.5.0);
- access tables (postfleet.core.dicts types) with access(5) results (OK,
  REJECT/DEFER [text], 4NN/5NN [text], DUNNO, DEFER_IF_PERMIT, WARN, INFO,
  a restriction list; HOLD, DISCARD, FILTER, REDIRECT, BCC and PREPEND are
  not supported and answer 451 4.3.5 Server configuration error, as Postfix
  does for what it cannot do): check_client_access (client name and its
  parent domains, then its address and its shorter networks),
  check_helo_access, check_sender_access and check_recipient_access
  (user@domain, domain and its parents, user@);
- names: reject_invalid_helo_hostname (501 5.5.2), reject_non_fqdn_helo_hostname,
  reject_non_fqdn_sender, reject_non_fqdn_recipient (504 5.5.2),
  reject_unknown_client_hostname (450 4.7.25), reject_unknown_sender_domain
  and reject_unknown_recipient_domain (450 4.1.8 / 4.1.2 "Domain not found";
  a null MX is 550 5.7.27 / 556 5.1.10; a DNS error is defer_if_permit);
- DNS lists: reject_rbl_client, reject_rhsbl_client, reject_rhsbl_sender
  (``domain`` or ``domain=127.0.0.2`` / ``=127.0.0.[2..5]``-style reply
  filters; default_rbl_reply's "554 5.7.1 Service unavailable; CLASS [WHAT]
  blocked using DOMAIN; TXT");
- sender/login binding (smtpd_sender_login_maps): reject_sender_login_mismatch,
  reject_authenticated_sender_login_mismatch,
  reject_known_sender_login_mismatch, reject_unauthenticated_sender_login_mismatch
  (553 5.7.1 "<s>: Sender address rejected: not owned by user NAME" / "not
  logged in");
- relay and recipient tables (postfleet.core.routing.rcpt_checks, shared with
  `postfleet route`): permit_auth_destination, reject_unauth_destination,
  defer_unauth_destination, reject_unlisted_recipient.

Deliberate differences: reply codes are Postfix's defaults, not parameters
(reject_code, defer_code, unknown_address_reject_code, ... and
default_rbl_reply keep their default values); smtpd_restriction_classes,
check_policy_service and warn_if_reject are not supported.

Postfix parameters: smtpd_client_restrictions, smtpd_helo_restrictions,
smtpd_sender_restrictions, smtpd_relay_restrictions,
smtpd_recipient_restrictions, smtpd_data_restrictions,
smtpd_end_of_data_restrictions, smtpd_delay_reject, smtpd_sender_login_maps,
smtpd_null_access_lookup_key (``<>``, fixed), mynetworks and the routing
tables (snapshot).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
import dns.reversename

from postfleet.core.dicts import Maps
from postfleet.core.maillog import maillog_event
from postfleet.core.routing import rcpt_checks
from postfleet.core.routing.resolver import authorized_destination
from postfleet.core.routing.store import RoutingView
from postfleet.core.routing.tables import address_keys
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply

log = logging.getLogger(__name__)

CLIENT, HELO, SENDER, RECIPIENT = "Client host", "Helo command", "Sender address", \
    "Recipient address"
DATA, END_OF_DATA = "Data command", "End-of-data"
NULL_SENDER_KEY = "<>"  # smtpd_null_access_lookup_key

# restriction -> does it take an argument (a table, a DNS list domain)?
TABLE_RESTRICTIONS = frozenset({
    "check_client_access", "check_helo_access", "check_sender_access",
    "check_recipient_access",
})
DOMAIN_RESTRICTIONS = frozenset({
    "reject_rbl_client", "reject_rhsbl_client", "reject_rhsbl_sender",
})
LOGIN_RESTRICTIONS = frozenset({
    "reject_sender_login_mismatch", "reject_authenticated_sender_login_mismatch",
    "reject_known_sender_login_mismatch", "reject_unauthenticated_sender_login_mismatch",
})
RECIPIENT_RESTRICTIONS = frozenset({
    rcpt_checks.PERMIT_AUTH_DESTINATION, rcpt_checks.REJECT_UNAUTH_DESTINATION,
    rcpt_checks.DEFER_UNAUTH_DESTINATION, rcpt_checks.REJECT_UNLISTED_RECIPIENT,
})
SIMPLE_RESTRICTIONS = frozenset({
    "permit", "reject", "defer", "defer_if_permit", "permit_mynetworks",
    "permit_sasl_authenticated", "reject_unauth_pipelining",
    "reject_invalid_helo_hostname", "reject_non_fqdn_helo_hostname",
    "reject_non_fqdn_sender", "reject_non_fqdn_recipient",
    "reject_unknown_client_hostname", "reject_unknown_sender_domain",
    "reject_unknown_recipient_domain",
}) | LOGIN_RESTRICTIONS | RECIPIENT_RESTRICTIONS
KNOWN = SIMPLE_RESTRICTIONS | TABLE_RESTRICTIONS | DOMAIN_RESTRICTIONS

CONFIG_ERROR = replies.CONFIG_ERROR
_UNSUPPORTED_ACTIONS = frozenset({"HOLD", "DISCARD", "FILTER", "REDIRECT", "BCC", "PREPEND",
                                  "HANGUP", "DEFER_IF_REJECT"})
_HOSTNAME = re.compile(r"^(?=.{1,255}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})"
                       r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$")
_DSN = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
DNS_TIMEOUT = 10.0


@dataclass(frozen=True)
class Step:
    name: str
    arg: str = ""


def parse_restrictions(param: str, values: Sequence[str]) -> list[Step]:
    """A restriction list (already split) -> steps; ValueError for unknown names
    or a missing argument."""
    steps: list[Step] = []
    items = list(values)
    i = 0
    while i < len(items):
        name = items[i].strip().lower()
        i += 1
        if not name:
            continue
        if name not in KNOWN:
            raise ValueError(f"{param}: unknown restriction {name!r} (known: "
                             f"{', '.join(sorted(KNOWN))})")
        if name in TABLE_RESTRICTIONS or name in DOMAIN_RESTRICTIONS:
            if i >= len(items) or items[i].lower() in KNOWN:
                what = "a table (type:name)" if name in TABLE_RESTRICTIONS else "a domain"
                raise ValueError(f"{param}: {name} needs {what}")
            steps.append(Step(name, items[i]))
            i += 1
        else:
            steps.append(Step(name))
    return steps


def validate(param: str, values: Sequence[str]) -> list[str]:
    """Settings validator: the list parses; returned as given, names lower-cased."""
    parse_restrictions(param, values)
    return [v if ":" in v or "." in v else v.strip().lower() for v in values if v.strip()]


@dataclass
class Facts:
    """What the restrictions know (smtpd's state)."""

    client_ip: str
    client_name: str = "unknown"
    helo: str = ""
    sender: str | None = None  # None: no MAIL yet; "" the null sender
    recipient: str | None = None
    sasl_username: str = ""
    pipelined: bool = False  # reject_unauth_pipelining's flag

    @property
    def namaddr(self) -> str:
        return f"{self.client_name}[{self.client_ip}]"


@dataclass
class _Run:
    """One evaluation: defer_if_permit's pending deferral."""

    defer_if_permit: SmtpReply | None = None


_PERMIT = True


class RestrictionParams(Protocol):
    """The parameters the checks read (SmtpdParams has them all)."""

    smtpd_client_restrictions: list[str]
    smtpd_helo_restrictions: list[str]
    smtpd_sender_restrictions: list[str]
    smtpd_relay_restrictions: list[str]
    smtpd_recipient_restrictions: list[str]
    smtpd_data_restrictions: list[str]
    smtpd_end_of_data_restrictions: list[str]
    smtpd_sender_login_maps: list[str]
    smtpd_delay_reject: bool
    receive_override_options: list[str]


LIST_PARAMETERS = (
    "smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
    "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
    "smtpd_end_of_data_restrictions",
)


@dataclass
class Checks:
    """The restriction lists of one listener, their tables opened."""

    params: RestrictionParams
    routing: RoutingView
    resolver: dns.asyncresolver.Resolver | None = None
    lists: dict[str, list[Step]] = field(default_factory=dict)
    tables: dict[str, Maps] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for param in LIST_PARAMETERS:
            steps = parse_restrictions(param, getattr(self.params, param))
            self.lists[param] = steps
            for step in steps:
                if step.name in TABLE_RESTRICTIONS and step.arg not in self.tables:
                    self.tables[step.arg] = Maps([step.arg])  # fails now, not at RCPT
        self.login_maps = Maps(self.params.smtpd_sender_login_maps)
        self.delay_reject = self.params.smtpd_delay_reject

    # -- the stages ---------------------------------------------------------------------
    async def client(self, facts: Facts, run: _Run | None = None) -> SmtpReply | None:
        return await self._list("smtpd_client_restrictions", facts, facts.namaddr, CLIENT,
                                run or _Run())

    async def helo(self, facts: Facts, run: _Run | None = None) -> SmtpReply | None:
        if not facts.helo:
            return None
        return await self._list("smtpd_helo_restrictions", facts, facts.helo, HELO,
                                run or _Run())

    async def sender(self, facts: Facts, run: _Run | None = None) -> SmtpReply | None:
        if facts.sender is None:
            return None
        return await self._list("smtpd_sender_restrictions", facts, facts.sender, SENDER,
                                run or _Run())

    async def recipient(self, facts: Facts) -> SmtpReply | None:
        """RCPT: (with smtpd_delay_reject) client, HELO and sender lists, then
        relay and recipient lists, then reject_unlisted_recipient."""
        recipient = facts.recipient or ""
        if recipient.lower() == "postmaster":
            return None
        run = _Run()
        if self.delay_reject:
            for stage in (self.client, self.helo, self.sender):
                refusal = await stage(facts, run)
                if refusal is not None:
                    return refusal
        for param in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions"):
            refusal = await self._list(param, facts, recipient, RECIPIENT, run)
            if refusal is not None:
                return refusal
        if run.defer_if_permit is not None:
            return run.defer_if_permit
        if "no_unknown_recipient_checks" in self.params.receive_override_options:
            return None  # a re-injection listener: the address was checked on the way in
        return rcpt_checks.unlisted_recipient(self.routing.snapshot, recipient)

    async def data(self, facts: Facts, recipients: int) -> SmtpReply | None:
        return await self._last_lists("smtpd_data_restrictions", facts, recipients,
                                      "DATA", DATA)

    async def end_of_data(self, facts: Facts, recipients: int) -> SmtpReply | None:
        return await self._last_lists("smtpd_end_of_data_restrictions", facts, recipients,
                                      "END-OF-MESSAGE", END_OF_DATA)

    async def _last_lists(self, param: str, facts: Facts, recipients: int, what: str,
                          kind: str) -> SmtpReply | None:
        if not self.lists[param]:
            return None
        if recipients > 1:  # Postfix: the recipient is known only when there is one
            facts = Facts(**{**facts.__dict__, "recipient": None})
        run = _Run()
        refusal = await self._list(param, facts, what, kind, run)
        return refusal if refusal is not None else run.defer_if_permit

    # -- one list ---------------------------------------------------------------------
    async def _list(self, param: str, facts: Facts, reply_name: str, reply_class: str,
                    run: _Run, steps: Sequence[Step] | None = None,
                    depth: int = 0) -> SmtpReply | None:
        for step in self.lists[param] if steps is None else steps:
            try:
                decision = await self._one(step, facts, reply_name, reply_class, run, depth)
            except (OSError, ValueError) as exc:  # an unreadable table
                log.error("%s: %s: %s", param, step.name, exc)
                decision = CONFIG_ERROR
            if decision is _PERMIT:
                return None
            if isinstance(decision, SmtpReply):
                # smtpd_check_reject: the SMTP code's class wins over the DSN's.
                code = str(decision.code)[0]
                if decision.status and decision.status[0] != code:
                    decision = SmtpReply(decision.code, code + decision.status[1:],
                                         decision.text)
                return decision
        return None

    async def _one(self, step: Step, facts: Facts, reply_name: str, reply_class: str,
                   run: _Run, depth: int) -> SmtpReply | bool | None:
        name = step.name
        snapshot = self.routing.snapshot
        rejected = f"<{reply_name}>: {reply_class} rejected"
        if name == "permit":
            return _PERMIT
        if name in ("reject", "defer"):
            base = replies.RCPT_ACCESS_DENIED if name == "reject" else replies.RCPT_ACCESS_DEFERRED
            return base.with_text(f"{rejected}: Access denied")
        if name == "defer_if_permit":
            run.defer_if_permit = run.defer_if_permit or SmtpReply(
                450, "4.7.1", f"{rejected}: defer_if_permit requested")
            return None
        if name in ("permit_mynetworks", "permit_sasl_authenticated"):
            client = rcpt_checks.Client(facts.client_ip, facts.sasl_username)
            return rcpt_checks.decide(name, snapshot, client, "")
        if name in RECIPIENT_RESTRICTIONS:
            if facts.recipient is None:
                return None
            client = rcpt_checks.Client(facts.client_ip, facts.sasl_username)
            return rcpt_checks.decide(name, snapshot, client, facts.recipient)
        if name == "reject_unauth_pipelining":
            if facts.pipelined:
                return SmtpReply(503, "5.5.0",
                                 f"{rejected}: Improper use of SMTP command pipelining")
            return None
        if name in TABLE_RESTRICTIONS:
            return await self._access(step, facts, reply_name, reply_class, run, depth)
        if name in DOMAIN_RESTRICTIONS:
            return await self._dnsxl(step, facts, reply_class)
        if name in LOGIN_RESTRICTIONS:
            return self._login(name, facts)
        return await self._names(name, facts, run)

    # -- host and address names -------------------------------------------------------
    async def _names(self, name: str, facts: Facts, run: _Run) -> SmtpReply | None:
        if name in ("reject_invalid_helo_hostname", "reject_non_fqdn_helo_hostname"):
            helo = facts.helo
            if not helo:
                return None
            bare = helo[:-1] if helo.endswith(".") and not helo.endswith("..") else helo
            if name == "reject_invalid_helo_hostname":
                if not (_HOSTNAME.match(bare) or _address_literal(bare)):
                    return SmtpReply(501, "5.5.2", f"<{helo}>: {HELO} rejected: Invalid name")
            elif not _address_literal(bare) and ("." not in bare or not _HOSTNAME.match(bare)):
                return SmtpReply(504, "5.5.2",
                                 f"<{helo}>: {HELO} rejected: need fully-qualified hostname")
            return None
        if name in ("reject_non_fqdn_sender", "reject_non_fqdn_recipient"):
            address, kind = _address_of(name, facts)
            if not address:
                return None
            domain = address.rpartition("@")[2] if "@" in address else ""
            if not domain or (not _address_literal(domain) and "." not in domain.rstrip(".")):
                return SmtpReply(504, "5.5.2",
                                 f"<{address}>: {kind} rejected: need fully-qualified address")
            return None
        if name == "reject_unknown_client_hostname":
            if facts.client_name == "unknown":
                return SmtpReply(450, "4.7.25", f"{CLIENT} rejected: cannot find your "
                                 f"hostname, [{facts.client_ip}]")
            return None
        if name in ("reject_unknown_sender_domain", "reject_unknown_recipient_domain"):
            address, kind = _address_of(name, facts)
            if not address or "@" not in address:
                return None
            domain = address.rpartition("@")[2].rstrip(".")
            if not domain or _address_literal(domain):
                return None
            if kind == RECIPIENT and authorized_destination(self.routing.snapshot, address):
                return None  # our own domains (Postfix: RESOLVE_CLASS_FINAL / relay)
            return await self._mailhost(address, domain, kind, run)
        raise ValueError(f"restriction {name} is not implemented")  # parse_restrictions guards

    async def _mailhost(self, address: str, domain: str, kind: str,
                        run: _Run) -> SmtpReply | None:
        """reject_unknown_*_domain: an MX, or else an A/AAAA record, must exist."""
        sender = kind == SENDER
        status = "4.1.8" if sender else "4.1.2"
        found = False
        try:
            for rdtype in ("MX", "A", "AAAA"):
                answer = await self._resolve(domain, rdtype)
                if answer is None:
                    continue
                if rdtype == "MX" and [str(r.exchange) for r in answer] == ["."]:
                    return (SmtpReply(550, "5.7.27", f"<{address}>: {kind} rejected: Domain "
                                      f"{domain} does not accept mail (nullMX)") if sender
                            else SmtpReply(556, "5.1.10", f"<{address}>: {kind} rejected: "
                                           f"Domain {domain} does not accept mail (nullMX)"))
                found = True
                break
        except (dns.exception.DNSException, OSError) as exc:
            log.info("%s: MX or address lookup error: %s", domain, exc)
            run.defer_if_permit = run.defer_if_permit or SmtpReply(
                450, status, f"<{address}>: {kind} rejected: Domain not found")
            return None
        if not found:
            return SmtpReply(450, status, f"<{address}>: {kind} rejected: Domain not found")
        return None

    async def _resolve(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        """An answer, None for NXDOMAIN/NODATA; DNSException for the rest."""
        resolver = self.resolver or dns.asyncresolver.get_default_resolver()
        try:
            return await resolver.resolve(name, rdtype, search=False, lifetime=DNS_TIMEOUT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None

    # -- access tables ------------------------------------------------------------------
    async def _access(self, step: Step, facts: Facts, reply_name: str, reply_class: str,
                      run: _Run, depth: int) -> SmtpReply | bool | None:
        table = self.tables[step.arg]
        found: tuple[str, str] | None = None  # (key, value)
        if step.name == "check_client_access":
            found = (_domain_lookup(table, facts.client_name)
                     if facts.client_name != "unknown" else None)
            found = found or _address_lookup(table, facts.client_ip)
        elif step.name == "check_helo_access":
            found = _domain_lookup(table, facts.helo) if facts.helo else None
        else:
            address = facts.sender if step.name == "check_sender_access" else facts.recipient
            if address is None:
                return None
            found = _mail_lookup(table, address or NULL_SENDER_KEY)
        if found is None:
            return None
        return await self._table_result(found[1], step.arg, facts, reply_name, reply_class,
                                        run, depth)

    async def _table_result(self, value: str, table: str, facts: Facts, reply_name: str,
                            reply_class: str, run: _Run, depth: int) -> SmtpReply | bool | None:
        """access(5): what a table's value means (smtpd_check.c check_table_result)."""
        action, _, text = value.strip().partition(" ")
        text = text.strip()
        upper = action.upper()
        rejected = f"<{reply_name}>: {reply_class} rejected"
        if upper in ("OK", "RELAY") or value.strip().isdigit():
            return _PERMIT
        if upper == "DUNNO":
            return None
        if upper in ("REJECT", "DEFER", "DEFER_IF_PERMIT"):
            code = 554 if upper == "REJECT" else 450
            default = "5.7.1" if upper == "REJECT" else "4.7.1"
            status, text = _dsn_split(text, default)
            fallback = "Service unavailable" if upper == "DEFER_IF_PERMIT" else "Access denied"
            reply = SmtpReply(code, _dsn_fix(status, reply_class),
                              f"{rejected}: {text or fallback}")
            if upper == "DEFER_IF_PERMIT":
                run.defer_if_permit = run.defer_if_permit or reply
                return None
            return reply
        if len(action) == 3 and action[0] in "45" and action[1:].isdigit() and text:
            status, text = _dsn_split(text, f"{action[0]}.7.1")
            return SmtpReply(int(action), _dsn_fix(status, reply_class),
                             f"{rejected}: {text or 'Access denied'}")
        if upper in ("WARN", "INFO"):
            maillog_event("smtpd", f"NOQUEUE: {upper.lower()}: {reply_class}: "
                          f"{facts.namaddr}: {text}")
            return None
        if upper in _UNSUPPORTED_ACTIONS or ":" in value or depth > 100:
            log.error("access table %s: unsupported result %r", table, value)
            return CONFIG_ERROR
        try:  # a restriction list as the result
            steps = parse_restrictions(f"access table {table}", value.replace(",", " ").split())
        except ValueError as exc:
            log.error("%s", exc)
            return CONFIG_ERROR
        if not steps:
            return _PERMIT  # "in the dark ages, an empty right-hand side meant OK"
        for step in steps:
            if step.name in TABLE_RESTRICTIONS and step.arg not in self.tables:
                log.error("access table %s: tables inside access tables: %s", table, value)
                return CONFIG_ERROR
        refusal = await self._list(table, facts, reply_name, reply_class, run, steps,
                                   depth + 1)
        return refusal if refusal is not None else None

    # -- DNS lists ------------------------------------------------------------------------
    async def _dnsxl(self, step: Step, facts: Facts, reply_class: str) -> SmtpReply | None:
        domain, _, wanted = step.arg.partition("=")
        if step.name == "reject_rbl_client":
            what = facts.client_ip
            try:
                reverse = dns.reversename.from_address(what).to_text(omit_final_dot=True)
            except (ValueError, dns.exception.SyntaxError):
                return None
            query = reverse.removesuffix(".in-addr.arpa").removesuffix(".ip6.arpa")
            label = CLIENT
        else:
            if step.name == "reject_rhsbl_client":
                what, label = facts.client_name, CLIENT
                if what == "unknown":
                    return None
                query = what
            else:
                if not facts.sender:
                    return None
                what, label = facts.sender, SENDER
                query = what.rpartition("@")[2]
            if not query or _address_literal(query) or not _HOSTNAME.match(query):
                return None
        name = f"{query.rstrip('.')}.{domain}"
        try:
            answer = await self._resolve(name, "A")
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("%s: RBL lookup error: %s", name, exc)
            return None
        if answer is None:
            return None
        if wanted and not any(_ip_matches(r.address, wanted) for r in answer):
            return None
        reason = ""
        try:
            txt = await self._resolve(name, "TXT")
            if txt is not None:
                reason = " / ".join(b"".join(r.strings).decode("utf-8", "replace")
                                    for r in txt)[:500]
        except (dns.exception.DNSException, OSError):
            pass
        return SmtpReply(554, "5.7.1", f"Service unavailable; {label} [{what}] blocked using "
                         f"{domain}{'; ' + reason if reason else ''}")

    # -- sender/login binding ---------------------------------------------------------------
    def _login(self, name: str, facts: Facts) -> SmtpReply | None:
        sender = facts.sender
        if not sender or not self.login_maps:
            return None
        authenticated = bool(facts.sasl_username)
        check_owner = name in ("reject_sender_login_mismatch",
                               "reject_authenticated_sender_login_mismatch",
                               "reject_known_sender_login_mismatch") and authenticated
        check_unauth = name in ("reject_sender_login_mismatch",
                                "reject_unauthenticated_sender_login_mismatch",
                                "reject_known_sender_login_mismatch") and not authenticated
        # mail_addr_find's order: user+ext@domain, user@domain, @domain.
        owners = next(((key, value) for key, _ in address_keys(sender, local=False,
                                                               delimiter="+")
                       if (value := self.login_maps.lookup(key)) is not None), None)
        if check_owner:
            if owners is None and name == "reject_known_sender_login_mismatch":
                return None
            listed = owners[1].replace(",", " ").split() if owners else []
            if facts.sasl_username.lower() not in (o.lower() for o in listed):
                return SmtpReply(553, "5.7.1", f"<{sender}>: {SENDER} rejected: not owned by "
                                 f"user {facts.sasl_username}")
        if check_unauth and owners is not None:
            return SmtpReply(553, "5.7.1", f"<{sender}>: {SENDER} rejected: not logged in")
        return None


def _address_of(name: str, facts: Facts) -> tuple[str, str]:
    if name.endswith("sender_domain") or name.endswith("fqdn_sender"):
        return facts.sender or "", SENDER
    return facts.recipient or "", RECIPIENT


def _address_literal(name: str) -> bool:
    text = name.strip("[]")
    if name.startswith("[") and name.endswith("]"):
        text = text.removeprefix("IPv6:").removeprefix("ipv6:")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _domain_lookup(table: Maps, name: str) -> tuple[str, str] | None:
    """check_domain_access: the name, then (partial keys) each parent domain."""
    name = name.lower().rstrip(".") if not name.endswith("..") else name.lower()
    value = table.lookup(name)
    if value is not None:
        return name, value
    if _address_literal(name):
        return None
    labels = name.split(".")
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        value = table.lookup(parent, partial=True)
        if value is not None:
            return parent, value
    return None


def _address_lookup(table: Maps, ip: str) -> tuple[str, str] | None:
    """check_addr_access: 1.2.3.4, then (partial) 1.2.3, 1.2, 1 (IPv6: by ':')."""
    if not ip:
        return None
    sep = ":" if ":" in ip else "."
    key = ip
    partial = False
    while key:
        value = table.lookup(key, partial=partial)
        if value is not None:
            return key, value
        key, _, _ = key.rpartition(sep)
        partial = True
    return None


def _mail_lookup(table: Maps, address: str) -> tuple[str, str] | None:
    """access(5) for addresses: user+ext@domain, user@domain, domain (and its
    parents), user+ext@, user@ (mail_addr_find with the access strategy)."""
    if address == NULL_SENDER_KEY:
        value = table.lookup(address)
        return None if value is None else (address, value)
    local, at, domain = address.lower().rpartition("@")
    if not at:
        local, domain = address.lower(), ""
    keys = [key for key, _ in address_keys(address, local=False, delimiter="+") if "@" in key
            and not key.startswith("@")]
    for number, key in enumerate(keys):
        value = table.lookup(key, partial=number > 0)
        if value is not None:
            return key, value
    if domain:
        labels = domain.split(".")
        for i in range(len(labels)):
            key = ".".join(labels[i:])
            value = table.lookup(key, partial=i > 0)
            if value is not None:
                return key, value
        base = local.split("+", 1)[0]
        for key in dict.fromkeys([f"{local}@", f"{base}@"]):
            value = table.lookup(key, partial=True)
            if value is not None:
                return key, value
    return None


def _dsn_split(text: str, default: str) -> tuple[str, str]:
    """access(5) text that starts with an enhanced status code: (code, rest)."""
    first, _, rest = text.partition(" ")
    if _DSN.match(first):
        return first, rest.strip()
    return default, text


def _dsn_fix(status: str, reply_class: str) -> str:
    """smtpd_dsn_fix: an address status (X.1.Y) made to fit what is rejected."""
    found = _DSN.match(status)
    if not found or found.group(2) != "1":
        return status
    klass, detail = found.group(1), found.group(3)
    if reply_class == SENDER:
        mapped = {"1": "7", "2": "8", "3": "7", "4": "7", "5": "0", "6": "7", "7": "7",
                  "8": "8"}.get(detail, "0")
    elif reply_class == RECIPIENT:
        mapped = {"7": "3", "8": "2"}.get(detail, detail if detail in "123456" else "0")
    else:
        return f"{klass}.0.0"
    return f"{klass}.1.{mapped}"


def _ip_matches(address: str, pattern: str) -> bool:
    """A DNS list reply filter: 127.0.0.2, or 127.0.0.[2..5] / [2;4] per octet."""
    octets, wanted = address.split("."), pattern.split(".")
    if len(octets) != 4 or len(wanted) != 4:
        return False
    for octet, want in zip(octets, wanted, strict=True):
        if want.startswith("[") and want.endswith("]"):
            ok = False
            for part in want[1:-1].split(";"):
                low, _, high = part.partition("..")
                if low.isdigit() and int(low) <= int(octet) <= int(high or low):
                    ok = True
            if not ok:
                return False
        elif want != octet:
            return False
    return True
