"""The smtp transport: Postfix's smtp(8) client, on aiosmtplib.

One job is one SMTP transaction to the job's nexthop: MAIL FROM, one RCPT TO
per recipient (each recipient gets its own outcome), DATA with the stored
content, and the end-of-data reply for every accepted recipient. Sessions
come from the connection cache (RSET first) or are opened here: resolve the
nexthop, connect (smtp_connect_timeout), read the greeting and EHLO
(smtp_helo_timeout, falling back to HELO).

Outcomes carry Postfix's texts, so logs and bounces read as Postfix's do:

    connect to host[ip]:port: Connection refused                  4.4.1
    host host[ip] refused to talk to me: 554 ...                  4.x.x
    host host[ip] said: 550 5.1.1 ... (in reply to RCPT TO command)
    lost connection with host[ip] while sending RCPT TO           4.4.2
    conversation with host[ip] timed out while sending end of data
        -- message may be sent more than once                     4.4.2

Postfix parameters: smtp_helo_name, smtp_connect_timeout, smtp_helo_timeout,
smtp_mail_timeout, smtp_rcpt_timeout, smtp_data_init_timeout,
smtp_data_done_timeout, smtp_rset_timeout, smtp_mx_address_limit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Sequence

import aiosmtplib
from aiosmtplib import SMTPResponse

from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.smtp.replies import parse_reply
from postfleet.delivery import metrics
from postfleet.delivery.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.delivery.outcome import RELAY_NONE, SENT, Delivery, Outcome, outcome
from postfleet.delivery.pool import Session, SessionPool
from postfleet.delivery.resolve import Address, HostResolver, ResolveError, Resolver
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage

log = logging.getLogger(__name__)

# -- content -------------------------------------------------------------------

_LEADING_DOT = re.compile(rb"(?m)^\.")


def dot_stuff(body: bytes) -> bytes:
    """The DATA payload: content with leading dots doubled (RFC 5321 4.5.2),
    a final line ending, and the terminating ``.<CRLF>``. Applied exactly once."""
    if not body:
        return b".\r\n"
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\n"):
        body += b"\r\n"
    return body + b".\r\n"


# -- addresses -----------------------------------------------------------------

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                       r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*")


def smtp_path(address: str) -> str:
    """Internal address form to the SMTP ``<path>``, quoting the local part
    when it is not a dot-atom (as Postfix's quote_822_local does)."""
    if not address:
        return "<>"
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not _DOT_ATOM.fullmatch(local) and not (
        len(local) > 1 and local.startswith('"') and local.endswith('"')
    ):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>" if at else f"<{local}>"


# -- replies -------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def _reply_text(resp: SMTPResponse) -> str:
    return f"{resp.code} {_one_line(resp.message)}".rstrip()


def _dsn(resp: SMTPResponse, force_class: str | None = None) -> str:
    """The enhanced status of a reply, its class made to agree with the code."""
    klass = str(resp.code)[:1]
    if klass not in ("2", "4", "5"):
        klass = "4"  # an unexpected reply: try again later
    klass = force_class or klass
    status = parse_reply(resp.code, _one_line(resp.message)).status
    return klass + status[1:] if status[:1] != klass else status


def _rejected(label: str, resp: SMTPResponse, command: str) -> Outcome:
    """A refusal; an unexpected 1xx-3xx reply counts as a temporary one."""
    text = f"host {label} said: {_reply_text(resp)} (in reply to {command} command)"
    return outcome(_dsn(resp, None if resp.code >= 400 else "4"), text, _reply_text(resp))


class _SessionFailure(Exception):
    """No usable session to any address; ``relay`` is none unless connected."""

    def __init__(self, result: Outcome, relay: str = RELAY_NONE) -> None:
        super().__init__(result.reply)
        self.result = result
        self.relay = relay


class SmtpTransport:
    """Delivers jobs over SMTP; one instance per process, shared by all jobs."""

    program = "smtp"

    def __init__(
        self, settings: DeliverySettings, pool: SessionPool, resolver: Resolver | None = None
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.resolver: Resolver = resolver or HostResolver()

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        try:
            nexthop = parse_nexthop(job.nexthop)
        except NexthopError as exc:
            return Delivery.all(count, outcome("4.3.5", f"mail system configuration error: {exc}"))
        key = str(nexthop)
        session = await self._cached(key)
        if session is None:
            try:
                session = await self._open(nexthop, message.queue_id)
            except _SessionFailure as failure:
                return Delivery.all(count, failure.result, failure.relay)
        clean = False
        try:
            outcomes, clean = await self._transaction(session, message, job.recipients)
        finally:
            if clean:
                self.pool.give(key, session)
            else:
                self.pool.discard(session)
        return Delivery(session.address.relay, outcomes)

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

    async def _open(self, nexthop: Nexthop, queue_id: str) -> Session:
        try:
            addresses = await self.resolver.resolve(nexthop)
        except ResolveError as exc:
            raise _SessionFailure(outcome(exc.dsn, exc.text)) from None
        failure: _SessionFailure | None = None
        for address in addresses[: max(1, self.settings.smtp_mx_address_limit)]:
            try:
                session = await self._session(address)
            except _SessionFailure as exc:
                failure = exc
                # Postfix logs each failed server before trying the next one.
                maillog(self.program, queue_id, exc.result.reply)
                continue
            self.pool.opened(session)
            return session
        assert failure is not None
        raise failure

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
                text = f"host {label} refused to talk to me: {_reply_text(resp)}"
                # Another server may do better: never a bounce (smtp_skip_5xx_greeting).
                raise _SessionFailure(outcome(_dsn(resp, "4"), text), relay) from None
            state = "performing the EHLO handshake"
            try:
                await client.ehlo(timeout=settings.smtp_helo_timeout)
            except aiosmtplib.SMTPHeloError as exc:
                if not client.is_connected or exc.code < 500:
                    resp = SMTPResponse(exc.code, exc.message)
                    raise _SessionFailure(_rejected(label, resp, "EHLO"), relay) from None
                state = "performing the HELO handshake"
                try:
                    await client.helo(timeout=settings.smtp_helo_timeout)
                except aiosmtplib.SMTPHeloError as exc2:
                    resp = SMTPResponse(exc2.code, exc2.message)
                    raise _SessionFailure(_rejected(label, resp, "HELO"), relay) from None
        except BaseException as exc:
            client.close()
            sock.close()
            if isinstance(exc, aiosmtplib.SMTPTimeoutError):
                text = f"conversation with {label} timed out while {state}"
            elif isinstance(exc, aiosmtplib.SMTPException | OSError):
                text = f"lost connection with {label} while {state}"
            else:  # a _SessionFailure already, or cancellation
                raise
            raise _SessionFailure(outcome("4.4.2", text), relay) from None
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
        raise _SessionFailure(outcome("4.4.1", text))

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

        # MAIL FROM parameters from the server's EHLO reply.
        params: list[bytes] = []
        if client.supports_extension("size"):
            limit_text = client.esmtp_extensions.get("size", "")
            limit = int(limit_text) if limit_text.isdigit() else 0
            if 0 < limit < len(body):
                text = f"message size {len(body)} exceeds size limit {limit} of server {label}"
                return [outcome("5.3.4", text)] * count, True
            params.append(b"SIZE=%d" % len(body))
        addresses = [message.sender, *(r.address for r in recipients)]
        utf8 = not all(a.isascii() for a in addresses)
        if utf8:
            if not client.supports_extension("smtputf8"):
                text = f"SMTPUTF8 is required, but was not offered by host {label}"
                return [outcome("5.6.7", text)] * count, True
            params.append(b"SMTPUTF8")
        if not body.isascii() and client.supports_extension("8bitmime"):
            params.append(b"BODY=8BITMIME")
        encoding = "utf-8" if utf8 else "ascii"

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
                return [_rejected(label, resp, "MAIL FROM")] * count, True

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
                    outcomes[index] = _rejected(label, resp, "RCPT TO")
            if not accepted:
                return _complete(outcomes), True

            state = "sending DATA command"
            resp = await client.execute_command(b"DATA", timeout=settings.smtp_data_init_timeout)
            if resp.code != 354:
                result = _rejected(label, resp, "DATA")
            else:
                # The content goes out as stored (CRLF), dot-stuffed here and
                # only here; aiosmtplib's data() would stuff and rewrite
                # line endings itself, so the protocol is driven directly.
                state = "sending end of data -- message may be sent more than once"
                protocol = client.protocol
                if protocol is None:
                    raise aiosmtplib.SMTPServerDisconnected("Connection lost")
                protocol.write(dot_stuff(body))
                resp = await protocol.read_response(timeout=settings.smtp_data_done_timeout)
                if 200 <= resp.code < 300:
                    result = Outcome(SENT, _dsn(resp), _reply_text(resp))
                else:
                    result = _rejected(label, resp, "end of DATA")
            for index in accepted:
                outcomes[index] = result
            return _complete(outcomes), True
        except aiosmtplib.SMTPTimeoutError:
            text = f"conversation with {label} timed out while {state}"
        except (aiosmtplib.SMTPException, OSError):
            text = f"lost connection with {label} while {state}"
        failed = outcome("4.4.2", text)
        return [o if o is not None else failed for o in outcomes], False


def _complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    missing = outcome("4.3.0", "internal error: no outcome")
    return [o if o is not None else missing for o in outcomes]
