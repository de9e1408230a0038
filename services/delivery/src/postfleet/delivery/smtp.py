"""The smtp transport: Postfix's smtp(8) client, on aiosmtplib.

One job is one SMTP transaction to the job's nexthop: MAIL FROM, one RCPT TO
per recipient (each recipient gets its own outcome), DATA with the stored
content, and the end-of-data reply for every accepted recipient. Sessions
come from the connection cache (RSET first) or are opened here: look up the
nexthop, connect (smtp_connect_timeout), read the greeting and EHLO
(smtp_helo_timeout, falling back to HELO).

Outcomes carry Postfix's texts, so logs and bounces read as Postfix's do:

    connect to host[ip]:port: Connection refused                  4.4.1
    host host[ip] refused to talk to me: 554 ...                  4.x.x
    host host[ip] said: 550 5.1.1 ... (in reply to RCPT TO command)
    lost connection with host[ip] while sending RCPT TO           4.4.2
    conversation with host[ip] timed out while sending end of data
        -- message may be sent more than once                     4.4.2

Servers are tried in the resolver's order (MX preference; see hostlookup.py):
the next one when a connection fails or the greeting or EHLO is refused, and
— as Postfix does for a server that is not the last — when a transaction
ends in soft errors, for the recipients that got them, until
smtp_mx_session_limit sessions have completed EHLO. A connection lost after
the content went out is not retried elsewhere (the server may have the mail).

Postfix parameters: smtp_helo_name, smtp_connect_timeout, smtp_helo_timeout,
smtp_mail_timeout, smtp_rcpt_timeout, smtp_data_init_timeout,
smtp_data_done_timeout, smtp_rset_timeout, smtp_mx_session_limit (and, in
the resolver, smtp_mx_address_limit).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import SMTPResponse

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
    outcome,
)
from postfleet.delivery.pool import Session, SessionPool
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.wire import (
    dot_stuff,
    mail_params,
    rejected,
    reply_dsn,
    reply_text,
    smtp_path,
)

__all__ = ["SmtpTransport", "dot_stuff", "smtp_path"]

# A connection lost after the content went out: the server may have it.
AMBIGUOUS = "-- message may be sent more than once"

class SmtpTransport:
    """Delivers jobs over SMTP; one instance per process, shared by all jobs."""

    program = "smtp"

    def __init__(
        self, settings: DeliverySettings, pool: SessionPool, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.resolver: Resolver = resolver or resolver_for(settings)

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        try:
            nexthop = parse_nexthop(job.nexthop)
        except NexthopError as exc:
            return Delivery.all(count, outcome("4.3.5", f"mail system configuration error: {exc}"))
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
                results, clean = await self._transaction(
                    session, message, [job.recipients[i] for i in pending]
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
        return Delivery(relay, _complete(outcomes))

    # -- sessions ----------------------------------------------------------------

    async def _cached(self, key: str) -> Session | None:
        """A cached session that answers RSET, or None."""
        while (session := self.pool.take(key)) is not None:
            try:
                resp = await session.client.execute_command(
                    b"RSET", timeout=self.settings.smtp_rset_timeout
                )
            except (aiosmtplib.SMTPException, OSError):
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
        session = await self._session(address)
        self.pool.opened(session)
        return session

    async def _session(self, address: Address) -> Session:
        settings = self.settings
        sock = await self._tcp_connect(address)
        try:
            client = aiosmtplib.SMTP(
                sock=sock, local_hostname=settings.smtp_helo_name, start_tls=False,
                timeout=settings.smtp_helo_timeout,
            )
        except BaseException:
            sock.close()
            raise
        label, relay = address.label, address.relay
        state = "receiving the initial server greeting"
        try:
            try:
                await client.connect(timeout=settings.smtp_helo_timeout)
            except aiosmtplib.SMTPConnectResponseError as exc:
                resp = SMTPResponse(exc.code, exc.message)
                text = f"host {label} refused to talk to me: {reply_text(resp)}"
                # Another server may do better: never a bounce (smtp_skip_5xx_greeting).
                raise TransportFailure(outcome(reply_dsn(resp, "4"), text), relay) from None
            state = "performing the EHLO handshake"
            try:
                await client.ehlo(timeout=settings.smtp_helo_timeout)
            except aiosmtplib.SMTPHeloError as exc:
                if not client.is_connected or exc.code < 500:
                    resp = SMTPResponse(exc.code, exc.message)
                    raise TransportFailure(rejected(label, resp, "EHLO"), relay) from None
                state = "performing the HELO handshake"
                try:
                    await client.helo(timeout=settings.smtp_helo_timeout)
                except aiosmtplib.SMTPHeloError as exc2:
                    resp = SMTPResponse(exc2.code, exc2.message)
                    raise TransportFailure(rejected(label, resp, "HELO"), relay) from None
        except BaseException as exc:
            client.close()
            sock.close()
            if isinstance(exc, aiosmtplib.SMTPTimeoutError):
                text = f"conversation with {label} timed out while {state}"
            elif isinstance(exc, aiosmtplib.SMTPException | OSError):
                text = f"lost connection with {label} while {state}"
            else:  # a TransportFailure already, or cancellation
                raise
            raise TransportFailure(outcome("4.4.2", text), relay) from None
        return Session(client, address)

    async def _tcp_connect(self, address: Address) -> socket.socket:
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, (address.ip, address.port)),
                self.settings.smtp_connect_timeout,
            )
        except TimeoutError:
            sock.close()
            reason = "Connection timed out"
        except OSError as exc:
            sock.close()
            # asyncio words it "Connect call failed"; Postfix says strerror's text.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        except BaseException:
            sock.close()
            raise
        else:
            return sock
        text = f"connect to {address.relay}: {reason}"
        raise TransportFailure(outcome("4.4.1", text))

    # -- the transaction ---------------------------------------------------------

    async def _transaction(
        self,
        session: Session,
        message: StoredMessage,
        recipients: Sequence[delivery_pb2.JobRecipient],
    ) -> tuple[list[Outcome], bool]:
        """Per-recipient outcomes, and whether the session is fit for reuse."""
        settings = self.settings
        client = session.client
        label = session.address.label
        count = len(recipients)
        outcomes: list[Outcome | None] = [None] * count
        body = message.body

        params, encoding, stop = mail_params(
            client.supports_extension, client.esmtp_extensions, body,
            [message.sender, *(r.address for r in recipients)], label)
        if stop is not None:
            return [stop] * count, True

        state = "sending MAIL FROM"
        try:
            try:
                sender = smtp_path(message.sender).encode(encoding)
                resp = await client.execute_command(
                    b"MAIL", b"FROM:" + sender, *params, timeout=settings.smtp_mail_timeout
                )
            except ValueError:  # control characters: never sent
                return [outcome("5.1.7", "bad sender address syntax")] * count, True
            if not 200 <= resp.code < 300:
                return [rejected(label, resp, "MAIL FROM")] * count, True

            state = "sending RCPT TO"
            accepted: list[int] = []
            for index, rcpt in enumerate(recipients):
                try:
                    path = smtp_path(rcpt.address).encode(encoding)
                    resp = await client.execute_command(
                        b"RCPT", b"TO:" + path, timeout=settings.smtp_rcpt_timeout
                    )
                except ValueError:
                    outcomes[index] = outcome("5.1.3", "bad recipient address syntax")
                    continue
                if 200 <= resp.code < 300:
                    accepted.append(index)
                else:
                    outcomes[index] = rejected(label, resp, "RCPT TO")
            if not accepted:
                return _complete(outcomes), True

            state = "sending DATA command"
            resp = await client.execute_command(b"DATA", timeout=settings.smtp_data_init_timeout)
            if resp.code != 354:
                result = rejected(label, resp, "DATA")
            else:
                # The content goes out as stored (CRLF), dot-stuffed here and
                # only here; aiosmtplib's data() would stuff and rewrite
                # line endings itself, so the protocol is driven directly.
                state = f"sending end of data {AMBIGUOUS}"
                protocol = client.protocol
                if protocol is None:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost")
                protocol.write(dot_stuff(body))
                resp = await protocol.read_response(timeout=settings.smtp_data_done_timeout)
                if 200 <= resp.code < 300:
                    result = outcome(reply_dsn(resp), reply_text(resp))
                else:
                    result = rejected(label, resp, "end of DATA")
            for index in accepted:
                outcomes[index] = result
            return _complete(outcomes), True
        except aiosmtplib.SMTPTimeoutError:
            text = f"conversation with {label} timed out while {state}"
        except (aiosmtplib.SMTPException, OSError):
            text = f"lost connection with {label} while {state}"
        failed = outcome("4.4.2", text)
        return [o if o is not None else failed for o in outcomes], False


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


def _complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    missing = outcome("4.3.0", "internal error: no outcome")
    return [o if o is not None else missing for o in outcomes]
