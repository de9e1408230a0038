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

Postfix parameters: smtp_helo_name, smtp_connect_timeout, smtp_helo_timeout,
smtp_mail_timeout, smtp_rcpt_timeout, smtp_data_init_timeout,
smtp_data_done_timeout, smtp_rset_timeout, smtp_mx_session_limit (and, in
the host lookup, smtp_mx_address_limit), smtp_send_xforward_command (XFORWARD
with the message's client facts, to a server that announces it: a content
filter).
"""

from __future__ import annotations

from postfleet.core.db.status import Outcome as Status
from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.delivery import metrics
from postfleet.delivery.hostlookup import Address, ResolveError, Resolver, resolver_for
from postfleet.delivery.outcome import (
    RELAY_NONE,
    Delivery,
    Outcome,
    TransportFailure,
    misconfigured,
    outcome,
)
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.session import Session
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.transaction import (
    AMBIGUOUS,
    CUT_SHORT,
    Timeouts,
    complete,
    connect,
    handshake,
    transaction,
)
from postfleet.delivery.wire import dot_stuff, smtp_path

__all__ = ["SmtpTransport", "dot_stuff", "smtp_path"]


class SmtpTransport:
    """Delivers jobs over SMTP; one instance per process, shared by all jobs."""

    program = "smtp"

    def __init__(
        self, settings: DeliverySettings, pool: SessionPool, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.resolver: Resolver = resolver or resolver_for(settings)
        self.timeouts = Timeouts(
            settings.smtp_mail_timeout, settings.smtp_rcpt_timeout,
            settings.smtp_data_init_timeout, settings.smtp_data_done_timeout)

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        try:
            nexthop = parse_nexthop(job.nexthop)
        except NexthopError as exc:
            return Delivery.all(count, misconfigured(exc))
        key = str(nexthop)
        servers = _Servers(self, nexthop, message.queue_id)
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

    async def _open(self, address: Address) -> Session:
        """A new session that has said EHLO (or HELO); raises TransportFailure."""
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
        self.pool.opened(session)
        return session


class _Servers:
    """The nexthop's addresses, resolved on first need, each tried once."""

    def __init__(self, transport: SmtpTransport, nexthop: Nexthop, queue_id: str) -> None:
        self.transport = transport
        self.nexthop = nexthop
        self.queue_id = queue_id
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
                return await self.transport._open(address)
            except TransportFailure as exc:
                self.failure = exc
                # Postfix logs each failed server before trying the next one.
                maillog(self.transport.program, self.queue_id, exc.result.reply)
        if self.failure is None:
            self.failure = TransportFailure(outcome("4.4.3", "no server address to try"))
        raise self.failure


_XTEXT_PLAIN = frozenset(range(33, 127)) - {ord("+"), ord("=")}


def _xtext(value: str) -> str:
    """RFC 3461 xtext: "+XX" for "+", "=", spaces and non-ASCII."""
    return "".join(chr(b) if b in _XTEXT_PLAIN else f"+{b:02X}" for b in value.encode())


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
        "PROTO": origin.protocol or "[UNAVAILABLE]",
        "HELO": origin.helo or "[UNAVAILABLE]",
        "IDENT": message.queue_id,
        "SOURCE": "LOCAL" if local else "REMOTE",
    }
    return ("XFORWARD " + " ".join(f"{k}={_xtext(v)}" for k, v in attrs.items())).encode()
