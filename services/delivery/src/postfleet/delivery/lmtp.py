"""The lmtp transport: Postfix's lmtp(8) client (RFC 2033), on asyncio streams.

LMTP is SMTP with LHLO for EHLO and one reply per accepted recipient after
the content, so each recipient gets the server's own verdict (a full
mailbox defers one recipient, not the message). The conversation is the smtp
client's (transaction.py); aiosmtplib has no LMTP, so the connection under
it is a small stream client of its own. One connection per job (no
connection cache), ended with QUIT when the transaction ended cleanly.

Next hops, as Postfix's lmtp(8) takes them, never with an MX lookup:

    unix:/path/to/socket          a UNIX-domain socket (relay=myhostname[path])
    inet:host:port, inet:[host]   TCP; the port defaults to lmtp_tcp_port (24)
    [host]:port, host:port, host  the same without the "inet:" prefix

Replies and failures read as smtp(8)'s do ("host h[ip] said: …",
"connect to …: Connection refused", "lost connection with … while …").

Postfix parameters: lmtp_lhlo_name, lmtp_tcp_port, lmtp_connect_timeout,
lmtp_lhlo_timeout, lmtp_mail_timeout, lmtp_rcpt_timeout,
lmtp_data_init_timeout, lmtp_data_done_timeout, lmtp_quit_timeout, and the
host lookup ones (smtp_host_lookup, inet_protocols).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from aiosmtplib import SMTPResponse

from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.delivery.hostlookup import AF_UNIX, Address, ResolveError, Resolver
from postfleet.delivery.outcome import Delivery, TransportFailure, misconfigured, outcome
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.transaction import (
    ConnectionLost,
    Timeouts,
    connect,
    handshake,
    quit_and_close,
    transaction,
)

# Longest reply line accepted (RFC 5321 says 512; servers send longer).
MAX_LINE = 65536


class LmtpProtocolError(ConnectionLost):
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
    """One LMTP session on a stream pair, the conversation's ``Connection``:
    commands out, replies in. Timeouts of 0 mean no limit."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: Address
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.address = address
        self.extensions: dict[str, str] = {}

    @classmethod
    async def over(cls, sock: socket.socket, address: Address) -> LmtpConnection:
        """A connection on a connected socket; nothing is read until greeting()."""
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            raise
        return cls(reader, writer, address)

    @property
    def alive(self) -> bool:
        return not self.writer.is_closing()

    async def greeting(self, timeout: float) -> SMTPResponse:
        return await self.reply(timeout)

    async def hello(self, verb: str, name: str, timeout: float) -> SMTPResponse:
        resp = await self.command(f"{verb} {name}".encode(), timeout)
        if resp.code == 250:
            self.extensions = _extensions(resp)
        return resp

    async def command(self, line: bytes, timeout: float) -> SMTPResponse:
        await self.write_data(line + b"\r\n", timeout)
        return await self.reply(timeout)

    async def write_data(self, payload: bytes, timeout: float) -> None:
        self.writer.write(payload)
        async with asyncio.timeout(timeout or None):
            await self.writer.drain()

    async def reply(self, timeout: float) -> SMTPResponse:
        """One (possibly multi-line) reply."""
        async with asyncio.timeout(timeout or None):
            lines: list[str] = []
            while True:
                line = await self._line()
                if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                    raise LmtpProtocolError(f"bad reply line {line[:80]!r}")
                lines.append(line[4:])
                if line[3:4] != "-":
                    return SMTPResponse(int(line[:3]), "\n".join(lines))

    async def _line(self) -> str:
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionLost("connection closed") from exc
        except asyncio.LimitOverrunError as exc:
            raise LmtpProtocolError(f"reply line longer than {MAX_LINE} bytes") from exc
        return raw.rstrip(b"\r\n").decode("utf-8", "replace")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def _extensions(resp: SMTPResponse) -> dict[str, str]:
    """The LHLO reply's keywords (lowercase) and their parameters."""
    extensions: dict[str, str] = {}
    for entry in resp.message.split("\n")[1:]:
        keyword, _, params = entry.strip().partition(" ")
        if keyword:
            extensions[keyword.lower()] = params
    return extensions


class LmtpTransport:
    """Delivers jobs over LMTP; one instance per process, shared by all jobs."""

    program = "lmtp"

    def __init__(self, settings: DeliverySettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver
        self.timeouts = Timeouts(
            settings.lmtp_mail_timeout, settings.lmtp_rcpt_timeout,
            settings.lmtp_data_init_timeout, settings.lmtp_data_done_timeout)

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        try:
            addresses = await self._addresses(job.nexthop)
        except NexthopError as exc:
            return Delivery.all(len(job.recipients), misconfigured(exc))
        except ResolveError as exc:
            return Delivery.all(len(job.recipients), outcome(exc.dsn, exc.text))
        failure: TransportFailure | None = None
        for address in addresses:
            try:
                conn = await self._open(address)
            except TransportFailure as exc:
                failure = exc
                maillog(self.program, message.queue_id, exc.result.reply)
                continue
            try:
                outcomes, clean = await transaction(
                    conn, message, job.recipients, self.timeouts,
                    per_recipient_data_replies=True,
                )
                if clean:  # a conversation cut short just closes
                    # The outcomes are settled: a slow QUIT must not hold the job.
                    await quit_and_close(conn, min(self.settings.lmtp_quit_timeout, 5.0))
            finally:
                conn.close()
            return Delivery(address.relay, outcomes)
        assert failure is not None
        return Delivery.all(len(job.recipients), failure.result, failure.relay)

    async def _addresses(self, nexthop: str) -> list[Address]:
        """The servers to try; raises NexthopError or ResolveError."""
        hop = parse_lmtp_nexthop(nexthop, self.settings.lmtp_tcp_port)
        if hop.tcp is None:
            return [Address(self.settings.myhostname, hop.path, 0, AF_UNIX)]
        return await self.resolver.resolve(hop.tcp)

    async def _open(self, address: Address) -> LmtpConnection:
        """A new connection that has said LHLO; raises TransportFailure."""
        settings = self.settings
        sock = await connect(address, settings.lmtp_connect_timeout)
        conn = await LmtpConnection.over(sock, address)
        try:
            await handshake(conn, "LHLO", settings.lmtp_lhlo_name, settings.lmtp_lhlo_timeout)
        except BaseException:
            conn.close()
            raise
        return conn
