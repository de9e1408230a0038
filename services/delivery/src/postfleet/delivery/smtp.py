"""The smtp transport: Postfix's smtp(8) client, on aiosmtplib.

One job is one SMTP transaction to the job's nexthop (transaction.py, which
the lmtp transport shares): MAIL FROM, one RCPT TO per recipient (each
recipient gets its own outcome), DATA with the stored content, and the
end-of-data reply for every accepted recipient. Sessions come from the
connection cache (RSET first) or are opened here: look up the nexthop,
connect (smtp_connect_timeout), read the greeting and EHLO
(smtp_helo_timeout, falling back to HELO). A session whose transaction ended
cleanly goes back to the cache; any other is closed.

Servers are tried in the host lookup's order (MX preference; see
hostlookup.py): the next one when a connection fails or the greeting or EHLO
is refused, and — as Postfix does for a server that is not the last — when
a transaction ends in soft errors, for the recipients that got them, until
smtp_mx_session_limit sessions have completed EHLO. A connection lost after
the content went out is not retried elsewhere (the server may have the mail).

A new session follows its next hop's TLS policy (tls.py: smtp_tls_policy_maps
from the routing snapshot, MTA-STS, smtp_tls_security_level): STARTTLS,
certificate checks, EHLO again, then SASL (sasl.py) when credentials exist
for the server. Cached sessions are kept per next hop and policy.

Postfix parameters: smtp_helo_name, smtp_connect_timeout, smtp_helo_timeout,
smtp_mail_timeout, smtp_rcpt_timeout, smtp_data_init_timeout,
smtp_data_done_timeout, smtp_rset_timeout, smtp_mx_session_limit (and, in
the host lookup, smtp_mx_address_limit); smtp_starttls_timeout,
smtp_tls_loglevel and, through tls.py, mtasts.py and sasl.py, the TLS and
SASL parameters; smtp_send_xforward_command (XFORWARD with the message's
client facts, to a server that announces it: a content filter).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postfleet.core.db.status import Outcome as Status
from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.smtp.dsn import smtputf8_requested, xtext_encode
from postfleet.delivery import metrics
from postfleet.delivery.hostlookup import (
    Address,
    DnsResolver,
    ResolveError,
    Resolver,
    resolver_for,
)
from postfleet.delivery.outcome import (
    RELAY_NONE,
    Delivery,
    Outcome,
    TransportFailure,
    misconfigured,
    outcome,
)
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.sasl import ClientSasl, Credentials
from postfleet.delivery.session import Session
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.tls import (
    HANDSHAKE,
    MAY,
    NONE,
    NOT_OFFERED,
    NOT_VERIFIED,
    POLICY_ERROR,
    REFUSED,
    Contexts,
    PolicyError,
    TlsPolicies,
    TlsPolicy,
    match_certificate,
    mx_listed,
    summary,
    wanted_names,
)
from postfleet.delivery.transaction import (
    AMBIGUOUS,
    CUT_SHORT,
    Timeouts,
    complete,
    connect,
    cut_short,
    handshake,
    transaction,
)
from postfleet.delivery.wire import dot_stuff, rejected, reply_dsn, reply_text, smtp_path

UNLISTED = "MX host {host} is not listed in the MTA-STS policy of {domain}"

if TYPE_CHECKING:
    from postfleet.delivery.mtasts import MtaSts

__all__ = ["SmtpTransport", "dot_stuff", "smtp_path"]


class SmtpTransport:
    """Delivers jobs over SMTP; one instance per process, shared by all jobs."""

    program = "smtp"

    def __init__(
        self, settings: DeliverySettings, pool: SessionPool, resolver: Resolver | None = None,
        routing: Callable[[], RoutingSnapshot] | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.resolver: Resolver = resolver or resolver_for(settings)
        self.timeouts = Timeouts(
            settings.smtp_mail_timeout, settings.smtp_rcpt_timeout,
            settings.smtp_data_init_timeout, settings.smtp_data_done_timeout)
        self.contexts = Contexts(settings.smtp_tls_CAfile, settings.smtp_tls_protocols,
                                 settings.smtp_tls_mandatory_protocols)
        self.mta_sts: MtaSts | None = None
        if settings.smtp_mta_sts_enable and isinstance(self.resolver, DnsResolver):
            # MTA-STS needs DNS (TXT records): off when DNS lookups are.
            # Imported only then: its HTTP client is memory most sites never use.
            from postfleet.delivery.mtasts import MtaSts, http_client

            self.mta_sts = MtaSts(
                self.resolver,
                http_client(self.contexts.verifying(), settings.smtp_mta_sts_timeout),
                timeout=settings.smtp_mta_sts_timeout,
                cache_size=settings.smtp_mta_sts_cache_size)
        tables = routing or RoutingSnapshot
        self.policies = TlsPolicies(settings, lambda: tables().smtp_tls_policy_maps,
                                    self.mta_sts)
        self.sasl = ClientSasl(settings)

    async def close(self) -> None:
        if self.mta_sts is not None:
            await self.mta_sts.close()

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        try:
            nexthop = parse_nexthop(job.nexthop)
        except NexthopError as exc:
            return Delivery.all(count, misconfigured(exc))
        try:
            policy = await self.policies.lookup(job.nexthop, nexthop)
        except PolicyError as exc:
            text = POLICY_ERROR.format(dest=job.nexthop, error=exc)
            return Delivery.all(count, outcome("4.7.5", text))
        route = _Route(job.nexthop, nexthop, policy, message.queue_id)
        key = f"{nexthop}|{policy.key}"
        servers = _Servers(self, route)
        outcomes: list[Outcome | None] = [None] * count
        pending = list(range(count))
        relay = RELAY_NONE
        sessions = 0
        limit = self.settings.smtp_mx_session_limit
        session = await self._cached(key)
        while True:
            if session is None:
                try:
                    session = await servers.next_session()
                except TransportFailure as failure:
                    for index in pending:
                        outcomes[index] = failure.result
                    if sessions == 0:
                        relay = failure.relay
                    break
            sessions += 1
            relay = session.address.relay
            servers.tried.add(session.address)
            clean = False
            try:
                results, clean = await transaction(
                    session, message, [job.recipients[i] for i in pending], self.timeouts,
                    per_recipient_data_replies=False, xforward=xforward_command(message),
                )
            finally:
                if clean:
                    self.pool.give(key, session)
                else:
                    self.pool.discard(session)
            session = None
            retry: list[int] = []
            for index, result in zip(pending, results, strict=True):
                outcomes[index] = result
                if result.status is Status.DEFERRED and AMBIGUOUS not in result.reply:
                    retry.append(index)
            # Postfix: a server that is not the last one gets no final say on
            # soft errors; their recipients go to the next MX host, within
            # smtp_mx_session_limit sessions.
            if not retry or 0 < limit <= sessions or not await servers.more():
                break
            first = outcomes[retry[0]]
            if first is not None:
                maillog(self.program, message.queue_id, first.reply)
            pending = retry
        return Delivery(relay, complete(outcomes))

    # -- sessions ----------------------------------------------------------------

    async def _cached(self, key: str) -> Session | None:
        """A cached session that answers RSET, or None."""
        while (session := self.pool.take(key)) is not None:
            try:
                resp = await session.command(b"RSET", self.settings.smtp_rset_timeout)
            except CUT_SHORT:
                self.pool.discard(session)
                continue
            except BaseException:
                self.pool.discard(session)
                raise
            if resp.code == 250:
                metrics.CONNECTIONS_REUSED.inc()
                return session
            self.pool.discard(session)
        return None

    async def _open(self, address: Address, route: _Route) -> Session:
        """A new session that has said EHLO (or HELO), under its TLS policy and
        authenticated when there are credentials; raises TransportFailure."""
        session = await self._connect(address)
        try:
            credentials = self.sasl.credentials(address.hostname, route.verbatim, route.nexthop)
            if route.policy.level != NONE:
                try:
                    await self._starttls(session, route)
                except _Plaintext:
                    # Postfix: an opportunistic handshake that fails is tried
                    # again in clear text, unless credentials would go out there.
                    maillog(self.program, route.queue_id,
                            f"{HANDSHAKE} with {address.relay}: trying again without TLS")
                    session.close()
                    session = await self._connect(address)
            if credentials is not None and "auth" in session.extensions:
                await self._login(session, credentials)
        except BaseException:
            session.close()
            raise
        self.pool.opened(session)
        return session

    async def _connect(self, address: Address) -> Session:
        """Connected, greeted and past EHLO (or HELO); raises TransportFailure."""
        settings = self.settings
        sock = await connect(address, settings.smtp_connect_timeout)
        session = Session.over(sock, address, settings.smtp_helo_name)
        try:
            await handshake(session, "EHLO", settings.smtp_helo_name,
                            settings.smtp_helo_timeout, helo_fallback=True)
        except BaseException:
            session.close()
            sock.close()  # aiosmtplib closes it only once it has made a transport of it
            raise
        return session

    async def _starttls(self, session: Session, route: _Route) -> None:
        """STARTTLS under ``route.policy``, the certificate checked when it
        must be, and EHLO again; TransportFailure when the policy is not met,
        _Plaintext when an opportunistic handshake failed."""
        policy, address = route.policy, session.address
        label, relay = address.label, address.relay
        if "starttls" not in session.extensions:
            if policy.required:
                raise TransportFailure(outcome("4.7.4", NOT_OFFERED.format(label=label)), relay)
            return
        context = self.contexts.for_policy(policy)
        try:
            resp = await session.starttls(context, address.hostname,
                                          self.settings.smtp_starttls_timeout)
        except ssl.SSLCertVerificationError as exc:
            maillog(self.program, route.queue_id, "server certificate verification failed "
                    f"for {relay}: {exc.verify_message or exc.reason}")
            raise TransportFailure(outcome("4.7.5", NOT_VERIFIED), relay) from None
        except (ssl.SSLError, *CUT_SHORT) as exc:
            if policy.level == MAY and not self._has_credentials(route, address):
                raise _Plaintext from exc
            raise TransportFailure(outcome("4.7.5", HANDSHAKE), relay) from None
        if resp.code != 220:
            if not policy.required:
                return  # Postfix goes on in clear text
            text = REFUSED.format(label=label, reply=reply_text(resp))
            raise TransportFailure(outcome(reply_dsn(resp, "4"), text, reply_text(resp)), relay)
        trust = "Untrusted"
        if policy.verifies:
            cert = session.ssl_object.getpeercert() if session.ssl_object else None
            wanted = wanted_names(policy.match, address.hostname, route.nexthop.host)
            if not cert or not match_certificate(cert, wanted):
                maillog(self.program, route.queue_id, "server certificate verification failed "
                        f"for {relay}: name does not match {', '.join(wanted)}")
                raise TransportFailure(outcome("4.7.5", NOT_VERIFIED), relay)
            trust = "Verified"
        session.tls = summary(trust, relay, session.ssl_object)
        if self.settings.smtp_tls_loglevel >= 1:
            maillog(self.program, "", session.tls)
        try:  # RFC 3207: what the server said before TLS no longer counts
            resp = await session.hello("EHLO", self.settings.smtp_helo_name,
                                       self.settings.smtp_helo_timeout)
        except CUT_SHORT as exc:
            failed = cut_short(exc, label, "performing the EHLO handshake")
            raise TransportFailure(failed, relay) from None
        if resp.code != 250:
            raise TransportFailure(rejected(label, resp, "EHLO"), relay)

    def _has_credentials(self, route: _Route, address: Address) -> bool:
        return self.sasl.credentials(address.hostname, route.verbatim, route.nexthop) is not None

    async def _login(self, session: Session, credentials: Credentials) -> None:
        try:
            await self.sasl.login(session, credentials)
        except CUT_SHORT as exc:
            failed = cut_short(exc, session.address.label, "performing the AUTH handshake")
            raise TransportFailure(failed, session.address.relay) from None


class _Plaintext(Exception):
    """An opportunistic TLS handshake failed: try the server in clear text."""


@dataclass(frozen=True, slots=True)
class _Route:
    """One delivery's next hop as written and parsed, its TLS policy, its queue id."""

    verbatim: str
    nexthop: Nexthop
    policy: TlsPolicy
    queue_id: str


class _Servers:
    """The nexthop's addresses, resolved on first need, each tried once."""

    def __init__(self, transport: SmtpTransport, route: _Route) -> None:
        self.transport = transport
        self.route = route
        self.nexthop = route.nexthop
        self.queue_id = route.queue_id
        self.addresses: list[Address] | None = None
        self.tried: set[Address] = set()
        self.failure: TransportFailure | None = None

    async def _load(self) -> list[Address]:
        if self.addresses is None:
            try:
                self.addresses = await self.transport.resolver.resolve(self.nexthop)
            except ResolveError as exc:
                self.addresses = []
                self.failure = TransportFailure(outcome(exc.dsn, exc.text))
        return self.addresses

    async def more(self) -> bool:
        return any(a not in self.tried for a in await self._load())

    async def next_session(self) -> Session:
        """A session with the next address that answers; raises TransportFailure."""
        for address in await self._load():
            if address in self.tried:
                continue
            self.tried.add(address)
            try:
                self._check_listed(address)
                return await self.transport._open(address, self.route)
            except TransportFailure as exc:
                self.failure = exc
                # Postfix logs each failed server before trying the next one.
                maillog(self.transport.program, self.queue_id, exc.result.reply)
        if self.failure is None:
            self.failure = TransportFailure(outcome("4.4.3", "no server address to try"))
        raise self.failure

    def _check_listed(self, address: Address) -> None:
        """MTA-STS enforce: only the MX hosts the policy lists."""
        mx = self.route.policy.mx
        if mx and not mx_listed(address.hostname, mx):
            text = UNLISTED.format(host=address.hostname, domain=self.nexthop.host)
            raise TransportFailure(outcome("4.7.5", text))


def xforward_command(message: StoredMessage) -> bytes:
    """The XFORWARD line for a message's origin (Postfix's attributes; an
    unknown value is [UNAVAILABLE]); empty when the origin was not read."""
    origin = message.origin
    if origin is None:
        return b""
    local = not origin.client_addr
    attrs = {
        "NAME": origin.client_name or ("[UNAVAILABLE]" if local else "unknown"),
        "ADDR": origin.client_addr or "[UNAVAILABLE]",
        # A message received with SMTPUTF8 is recorded as UTF8SMTP; XFORWARD
        # names the protocol spoken, ESMTP, as Postfix's smtpd does.
        "PROTO": ("ESMTP" if smtputf8_requested(origin.protocol) else origin.protocol)
                 or "[UNAVAILABLE]",
        "HELO": origin.helo or "[UNAVAILABLE]",
        "IDENT": message.queue_id,
        "SOURCE": "LOCAL" if local else "REMOTE",
    }
    return ("XFORWARD " + " ".join(f"{k}={xtext_encode(v)}" for k, v in attrs.items())).encode()
