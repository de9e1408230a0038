"""The lmtp transport: Postfix's lmtp(8) client (RFC 2033), on asyncio streams.

LMTP is SMTP with LHLO for EHLO and one reply per accepted recipient after
the content, so each recipient gets the server's own verdict (a full
mailbox bounces one recipient, not the message). aiosmtplib has no LMTP,
so this is a small client of its own: greeting, LHLO, MAIL FROM, RCPT TO
each, DATA, the content, then one reply per accepted RCPT, in order, and
QUIT. One connection per job (no connection cache).

Next hops, as Postfix's lmtp(8) takes them, never with an MX lookup:

    unix:/path/to/socket          a UNIX-domain socket (relay=myhostname[path])
    inet:host:port, inet:[host]   TCP; the port defaults to lmtp_tcp_port (24)
    [host]:port, host:port, host  the same without the "inet:" prefix

Replies and failures read as smtp(8)'s do ("host h[ip] said: …",
"connect to …: Connection refused", "lost connection with … while …").

Postfix parameters: lmtp_lhlo_name, lmtp_tcp_port, lmtp_connect_timeout,
lmtp_lhlo_timeout, lmtp_mail_timeout, lmtp_rcpt_timeout,
lmtp_data_init_timeout, lmtp_data_done_timeout, lmtp_quit_timeout, and the
host lookup ones of the resolver (smtp_host_lookup, inet_protocols).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from aiosmtplib import SMTPResponse

from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.delivery.hostlookup import Address, ResolveError, Resolver
from postfleet.delivery.outcome import (
    Delivery,
    Outcome,
    TransportFailure,
    outcome,
)
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

AF_UNIX = getattr(socket, "AF_UNIX", -1)
# Longest reply line accepted (RFC 5321 says 512; servers send longer).
MAX_LINE = 65536


class LmtpProtocolError(Exception):
    """The server broke the protocol (a garbled reply)."""


@dataclass(frozen=True, slots=True)
class LmtpNexthop:
    """Either a TCP nexthop or a socket path."""

    tcp: Nexthop | None = None
    path: str = ""


def parse_lmtp_nexthop(text: str, default_port: int) -> LmtpNexthop:
    value = text.strip()
    kind, sep, rest = value.partition(":")
    if sep and kind.lower() == "unix":
        if not rest:
            raise NexthopError(f"empty socket path in nexthop {text!r}")
        return LmtpNexthop(path=rest)
    if sep and kind.lower() == "inet":
        value = rest
    hop = parse_nexthop(value, default_port)
    # LMTP never looks up MX records: every host is taken literally.
    return LmtpNexthop(tcp=Nexthop(hop.host, hop.port, literal=True))


class LmtpConnection:
    """One LMTP session on a stream pair: commands out, replies in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions: dict[str, str] = {}

    async def reply(self, timeout: float) -> SMTPResponse:
        """One (possibly multi-line) reply."""
        async with asyncio.timeout(timeout or None):
            lines: list[str] = []
            while True:
                raw = await self.reader.readuntil(b"\n")
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                    raise LmtpProtocolError(f"bad reply line {line[:80]!r}")
                lines.append(line[4:])
                if line[3:4] != "-":
                    return SMTPResponse(int(line[:3]), "\n".join(lines))

    async def command(self, line: bytes, timeout: float) -> SMTPResponse:
        self.writer.write(line + b"\r\n")
        async with asyncio.timeout(timeout or None):
            await self.writer.drain()
        return await self.reply(timeout)

    def lhlo_extensions(self, resp: SMTPResponse) -> None:
        for entry in resp.message.split("\n")[1:]:
            keyword, _, params = entry.strip().partition(" ")
            if keyword:
                self.extensions[keyword.lower()] = params

    def supports(self, name: str) -> bool:
        return name in self.extensions

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class LmtpTransport:
    """Delivers jobs over LMTP; one instance per process, shared by all jobs."""

    program = "lmtp"

    def __init__(self, settings: DeliverySettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        try:
            hop = parse_lmtp_nexthop(job.nexthop, self.settings.lmtp_tcp_port)
        except NexthopError as exc:
            return Delivery.all(count, outcome("4.3.5", f"mail system configuration error: {exc}"))
        try:
            addresses = await self._addresses(hop)
        except ResolveError as exc:
            return Delivery.all(count, outcome(exc.dsn, exc.text))
        failure: TransportFailure | None = None
        for address in addresses:
            try:
                conn = await self._connect(address)
            except TransportFailure as exc:
                failure = exc
                maillog(self.program, message.queue_id, exc.result.reply)
                continue
            try:
                outcomes = await self._transaction(conn, address, message, job.recipients)
            finally:
                conn.close()
            return Delivery(address.relay, outcomes)
        assert failure is not None
        return Delivery.all(count, failure.result, failure.relay)

    async def _addresses(self, hop: LmtpNexthop) -> list[Address]:
        if hop.tcp is None:
            return [Address(self.settings.myhostname, hop.path, 0, AF_UNIX)]
        return await self.resolver.resolve(hop.tcp)

    # -- session -----------------------------------------------------------------

    async def _connect(self, address: Address) -> LmtpConnection:
        settings = self.settings
        try:
            async with asyncio.timeout(settings.lmtp_connect_timeout or None):
                if address.family == AF_UNIX:
                    reader, writer = await asyncio.open_unix_connection(
                        address.ip, limit=MAX_LINE)
                else:
                    reader, writer = await asyncio.open_connection(
                        address.ip, address.port, limit=MAX_LINE)
        except TimeoutError:
            reason = "Connection timed out"
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        else:
            conn = LmtpConnection(reader, writer)
            try:
                await self._hello(conn, address)
            except BaseException:
                conn.close()
                raise
            return conn
        where = address.relay if address.family != AF_UNIX else address.ip
        raise TransportFailure(outcome("4.4.1", f"connect to {where}: {reason}"))

    async def _hello(self, conn: LmtpConnection, address: Address) -> None:
        settings = self.settings
        label, relay = address.label, address.relay
        state = "receiving the initial server greeting"
        try:
            resp = await conn.reply(settings.lmtp_lhlo_timeout)
            if resp.code != 220:
                text = f"host {label} refused to talk to me: {reply_text(resp)}"
                raise TransportFailure(outcome(reply_dsn(resp, "4"), text), relay)
            state = "performing the LHLO handshake"
            resp = await conn.command(
                b"LHLO " + settings.lmtp_lhlo_name.encode(), settings.lmtp_lhlo_timeout
            )
            if resp.code != 250:
                raise TransportFailure(rejected(label, resp, "LHLO"), relay)
            conn.lhlo_extensions(resp)
        except TimeoutError:
            raise TransportFailure(outcome(
                "4.4.2", f"conversation with {label} timed out while {state}"), relay) from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                LmtpProtocolError):
            raise TransportFailure(outcome(
                "4.4.2", f"lost connection with {label} while {state}"), relay) from None

    async def _transaction(
        self,
        conn: LmtpConnection,
        address: Address,
        message: StoredMessage,
        recipients: Sequence[delivery_pb2.JobRecipient],
    ) -> list[Outcome]:
        settings = self.settings
        label = address.label
        count = len(recipients)
        outcomes: list[Outcome | None] = [None] * count
        body = message.body

        params, encoding, stop = mail_params(
            conn.supports, conn.extensions, body,
            [message.sender, *(r.address for r in recipients)], label)
        if stop is not None:
            return [stop] * count

        state = "sending MAIL FROM"
        try:
            try:
                sender = smtp_path(message.sender).encode(encoding)
            except ValueError:
                return [outcome("5.1.7", "bad sender address syntax")] * count
            if b"\r" in sender or b"\n" in sender:
                return [outcome("5.1.7", "bad sender address syntax")] * count
            resp = await conn.command(
                b" ".join([b"MAIL FROM:" + sender, *params]), settings.lmtp_mail_timeout
            )
            if not 200 <= resp.code < 300:
                return [rejected(label, resp, "MAIL FROM")] * count

            state = "sending RCPT TO"
            accepted: list[int] = []
            for index, rcpt in enumerate(recipients):
                path = smtp_path(rcpt.address).encode(encoding)
                if b"\r" in path or b"\n" in path:
                    outcomes[index] = outcome("5.1.3", "bad recipient address syntax")
                    continue
                resp = await conn.command(b"RCPT TO:" + path, settings.lmtp_rcpt_timeout)
                if 200 <= resp.code < 300:
                    accepted.append(index)
                else:
                    outcomes[index] = rejected(label, resp, "RCPT TO")
            if not accepted:
                await self._quit(conn)
                return _complete(outcomes)

            state = "sending DATA command"
            resp = await conn.command(b"DATA", settings.lmtp_data_init_timeout)
            if resp.code != 354:
                result = rejected(label, resp, "DATA")
                for index in accepted:
                    outcomes[index] = result
                await self._quit(conn)
                return _complete(outcomes)

            state = "sending end of data -- message may be sent more than once"
            conn.writer.write(dot_stuff(body))
            async with asyncio.timeout(settings.lmtp_data_done_timeout or None):
                await conn.writer.drain()
            # RFC 2033: one reply per accepted recipient, in RCPT order.
            for index in accepted:
                resp = await conn.reply(settings.lmtp_data_done_timeout)
                if 200 <= resp.code < 300:
                    outcomes[index] = outcome(reply_dsn(resp), reply_text(resp))
                else:
                    outcomes[index] = rejected(label, resp, "end of DATA")
            await self._quit(conn)
            return _complete(outcomes)
        except TimeoutError:
            text = f"conversation with {label} timed out while {state}"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                LmtpProtocolError):
            text = f"lost connection with {label} while {state}"
        failed = outcome("4.4.2", text)
        return [o if o is not None else failed for o in outcomes]

    async def _quit(self, conn: LmtpConnection) -> None:
        """QUIT politely; the outcomes are settled, so any failure is ignored."""
        with contextlib.suppress(Exception):
            await conn.command(b"QUIT", min(self.settings.lmtp_quit_timeout, 5.0))


def _complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    missing = outcome("4.3.0", "internal error: no outcome")
    return [o if o is not None else missing for o in outcomes]
