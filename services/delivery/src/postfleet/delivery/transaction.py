"""The client side of an SMTP or LMTP conversation, one for the smtp and
lmtp transports, as Postfix builds smtp(8) and lmtp(8) from one source.

A client connects (``connect``), reads the greeting and says hello
(``handshake``: EHLO, falling back to HELO, for smtp; LHLO for lmtp), then
runs a ``transaction`` per job: MAIL FROM, one RCPT TO per recipient (each
recipient gets its own outcome), DATA, the content, and the end-of-data
reply — one for every accepted recipient (SMTP), or one per accepted
recipient in RCPT order (LMTP, RFC 2033), so that a full mailbox defers one
recipient, not the message. The two clients differ only in the
``Connection`` they hand in: an aiosmtplib session (session.py) or lmtp's
stream client (lmtp.py).

Outcomes carry Postfix's texts, so logs and bounces read as Postfix's do:

    connect to host[ip]:port: Connection refused                  4.4.1
    host host[ip] refused to talk to me: 554 ...                  4.x.x
    host host[ip] said: 550 5.1.1 ... (in reply to RCPT TO command)
    lost connection with host[ip] while sending RCPT TO           4.4.2
    conversation with host[ip] timed out while sending end of data
        -- message may be sent more than once                     4.4.2

An address that cannot go on the wire as it is — with a control character,
which could smuggle in a command of its own — is never sent: the sender
bounces 5.1.7, a recipient 5.1.3.

Postfix parameters (the smtp_ or lmtp_ ones, passed in by each client):
smtp_connect_timeout, smtp_helo_timeout, smtp_mail_timeout,
smtp_rcpt_timeout, smtp_data_init_timeout, smtp_data_done_timeout,
smtp_quit_timeout; lmtp_connect_timeout, lmtp_lhlo_timeout,
lmtp_mail_timeout, lmtp_rcpt_timeout, lmtp_data_init_timeout,
lmtp_data_done_timeout, lmtp_quit_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiosmtplib import SMTPResponse

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.hostlookup import AF_UNIX, Address
from postfleet.delivery.outcome import Outcome, TransportFailure, outcome
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.wire import (
    dot_stuff,
    mail_params,
    rcpt_params,
    rejected,
    reply_dsn,
    reply_text,
    smtp_path,
)

__all__ = [
    "AMBIGUOUS",
    "CUT_SHORT",
    "Connection",
    "ConnectionLost",
    "Timeouts",
    "complete",
    "connect",
    "cut_short",
    "handshake",
    "quit_and_close",
    "transaction",
]

# Appended to a failure once the content went out: the server may have it.
AMBIGUOUS = "-- message may be sent more than once"


class ConnectionLost(Exception):
    """The server hung up or broke the protocol: the session cannot go on."""


# What cuts a conversation short; OSError includes TimeoutError.
CUT_SHORT = (ConnectionLost, OSError)


class Connection(Protocol):
    """A client connection as the conversation drives it. Timeouts are in
    seconds (0: no limit); past one, a method raises TimeoutError, and on a
    connection gone, ConnectionLost or OSError."""

    @property
    def address(self) -> Address: ...

    @property
    def alive(self) -> bool: ...

    @property
    def extensions(self) -> Mapping[str, str]:
        """The EHLO/LHLO reply's keywords (lowercase) and their parameters."""
        ...

    async def greeting(self, timeout: float) -> SMTPResponse: ...

    async def hello(self, verb: str, name: str, timeout: float) -> SMTPResponse:
        """``verb name`` (EHLO, HELO or LHLO), keeping the extensions it announces."""
        ...

    async def command(self, line: bytes, timeout: float) -> SMTPResponse: ...

    async def write_data(self, payload: bytes, timeout: float) -> None:
        """The DATA payload as it is (already framed by ``dot_stuff``)."""
        ...

    async def reply(self, timeout: float) -> SMTPResponse: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Timeouts:
    """A transaction's timeouts: smtp_* or lmtp_* mail_timeout, rcpt_timeout,
    data_init_timeout and data_done_timeout (which also covers the content)."""

    mail: float
    rcpt: float
    data_init: float
    data_done: float


# -- the session -----------------------------------------------------------------


async def connect(address: Address, timeout: float) -> socket.socket:
    """A socket connected to ``address`` within ``timeout`` seconds (0: the
    operating system's limit), or TransportFailure: "connect to …: reason"."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    sock.setblocking(False)
    unix = address.family == AF_UNIX
    target = address.ip if unix else (address.ip, address.port)
    try:
        async with asyncio.timeout(timeout or None):
            await asyncio.get_running_loop().sock_connect(sock, target)
    except OSError as exc:
        sock.close()
        reason = "Connection timed out" if isinstance(exc, TimeoutError) else _strerror(exc)
    except BaseException:
        sock.close()
        raise
    else:
        return sock
    where = address.ip if unix else address.relay  # a socket is named by its path
    raise TransportFailure(outcome("4.4.1", f"connect to {where}: {reason}"))


def _strerror(exc: OSError) -> str:
    # asyncio words it "Connect call failed ..."; Postfix says strerror's text.
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def handshake(
    conn: Connection, verb: str, name: str, timeout: float, *, helo_fallback: bool = False
) -> None:
    """Read the greeting and say ``verb name``; TransportFailure when the
    server will not talk (the caller closes ``conn``). ``helo_fallback``:
    after a 5xx EHLO reply try HELO, as smtp(8) does; lmtp(8) does not."""
    label, relay = conn.address.label, conn.address.relay
    state = "receiving the initial server greeting"
    try:
        resp = await conn.greeting(timeout)
        if resp.code != 220:
            text = f"host {label} refused to talk to me: {reply_text(resp)}"
            # Another server may do better: never a bounce (smtp_skip_5xx_greeting).
            raise TransportFailure(outcome(reply_dsn(resp, "4"), text), relay)
        state = f"performing the {verb} handshake"
        resp = await conn.hello(verb, name, timeout)
        if helo_fallback and resp.code >= 500 and conn.alive:
            verb, state = "HELO", "performing the HELO handshake"
            resp = await conn.hello(verb, name, timeout)
        if resp.code != 250:
            raise TransportFailure(rejected(label, resp, verb), relay)
    except CUT_SHORT as exc:
        raise TransportFailure(cut_short(exc, label, state), relay) from None


def cut_short(exc: BaseException, label: str, state: str) -> Outcome:
    """4.4.2, in Postfix's words for a conversation that timed out or was lost."""
    if isinstance(exc, TimeoutError):
        return outcome("4.4.2", f"conversation with {label} timed out while {state}")
    return outcome("4.4.2", f"lost connection with {label} while {state}")


async def quit_and_close(conn: Connection, timeout: float) -> None:
    """QUIT politely, then close. The outcomes are settled by then, so a
    server already gone or slow to answer changes nothing."""
    try:
        with contextlib.suppress(Exception):
            await conn.command(b"QUIT", timeout)
    finally:
        conn.close()


# -- the transaction -------------------------------------------------------------


async def transaction(
    conn: Connection,
    message: StoredMessage,
    recipients: Sequence[delivery_pb2.JobRecipient],
    timeouts: Timeouts,
    *,
    per_recipient_data_replies: bool,
    xforward: bytes = b"",
) -> tuple[list[Outcome], bool]:
    """Each recipient's outcome, and whether ``conn`` may go on (RSET and
    reuse, or QUIT): not once the conversation was cut short.
    ``per_recipient_data_replies``: LMTP's one end-of-data reply per
    accepted recipient instead of SMTP's one for all. ``xforward``: an
    XFORWARD command sent first when the server announces XFORWARD."""
    count = len(recipients)
    label = conn.address.label
    addresses = [message.sender, *(r.address for r in recipients)]
    params, encoding, stop = mail_params(conn.extensions, message.body, addresses, label,
                                         smtputf8=message.smtputf8, ret=message.ret,
                                         envid=message.envid)
    if stop is not None:  # too large, or SMTPUTF8 not offered: not even MAIL FROM
        return [stop] * count, True
    sender = _path(message.sender, encoding)
    if sender is None:
        return [outcome("5.1.7", "bad sender address syntax")] * count, True
    paths = [None if (path := _path(r.address, encoding)) is None
             else path + rcpt_params(conn.extensions, r) for r in recipients]
    run = _Transaction(conn, timeouts, count)
    try:
        if xforward and "xforward" in conn.extensions:
            await run.xforward(xforward)
        await run.run(sender, params, paths, message.body, per_recipient_data_replies)
    except CUT_SHORT as exc:
        # Recipients already settled keep their outcome (LMTP: sent ones stay sent).
        failed = cut_short(exc, label, run.state)
        return [o if o is not None else failed for o in run.outcomes], False
    return complete(run.outcomes), True


def complete(outcomes: list[Outcome | None]) -> list[Outcome]:
    """Every recipient's outcome; one left without (a bug) is retried, never lost."""
    missing = outcome("4.3.0", "internal error: no outcome")
    return [o if o is not None else missing for o in outcomes]


_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


def _path(address: str, encoding: str) -> bytes | None:
    """The address as an SMTP path on the wire, or None when it cannot be
    sent as it is: not encodable, or with a control character (a CR or LF
    would end the command early and start another)."""
    try:
        path = smtp_path(address).encode(encoding)
    except UnicodeEncodeError:
        return None
    return None if _CONTROL.search(path) else path


def _positive(resp: SMTPResponse) -> bool:
    return 200 <= resp.code < 300


class _Transaction:
    """One transaction under way: the outcomes so far, and what it is doing
    (the "while …" of a conversation cut short)."""

    def __init__(self, conn: Connection, timeouts: Timeouts, count: int) -> None:
        self.conn = conn
        self.timeouts = timeouts
        self.label = conn.address.label
        self.outcomes: list[Outcome | None] = [None] * count
        self.state = ""

    def _settle(self, indexes: Iterable[int], result: Outcome) -> None:
        for index in indexes:
            self.outcomes[index] = result

    async def xforward(self, line: bytes) -> None:
        """Postfix smtp(8): a refused XFORWARD is logged by the server and
        the transaction goes on; only a lost connection ends it."""
        self.state = "sending XFORWARD"
        await self.conn.command(line, self.timeouts.mail)

    async def run(
        self, sender: bytes, params: list[bytes], paths: list[bytes | None], body: bytes,
        per_recipient_data_replies: bool,
    ) -> None:
        self.state = "sending MAIL FROM"
        line = b" ".join([b"MAIL FROM:" + sender, *params])
        resp = await self.conn.command(line, self.timeouts.mail)
        if not _positive(resp):
            self._settle(range(len(self.outcomes)), rejected(self.label, resp, "MAIL FROM"))
            return
        accepted = await self._rcpt_to(paths)
        if accepted:
            await self._data(accepted, body, per_recipient_data_replies)

    async def _rcpt_to(self, paths: list[bytes | None]) -> list[int]:
        """RCPT TO for each recipient; the indexes of the accepted ones."""
        self.state = "sending RCPT TO"
        accepted: list[int] = []
        for index, path in enumerate(paths):
            if path is None:
                self.outcomes[index] = outcome("5.1.3", "bad recipient address syntax")
                continue
            resp = await self.conn.command(b"RCPT TO:" + path, self.timeouts.rcpt)
            if _positive(resp):
                accepted.append(index)
            else:
                self.outcomes[index] = rejected(self.label, resp, "RCPT TO")
        return accepted

    async def _data(self, accepted: list[int], body: bytes, per_recipient: bool) -> None:
        self.state = "sending DATA command"
        resp = await self.conn.command(b"DATA", self.timeouts.data_init)
        if resp.code != 354:
            self._settle(accepted, rejected(self.label, resp, "DATA"))
            return
        # From here on the server may have the mail, whatever happens next.
        self.state = f"sending end of data {AMBIGUOUS}"
        await self.conn.write_data(dot_stuff(body), self.timeouts.data_done)
        if per_recipient:
            for index in accepted:  # RFC 2033: in RCPT order
                self._settle([index], await self._end_of_data())
        else:
            self._settle(accepted, await self._end_of_data())

    async def _end_of_data(self) -> Outcome:
        resp = await self.conn.reply(self.timeouts.data_done)
        if _positive(resp):
            # A server that offered DSN has the request now (Postfix drops
            # NOTIFY=SUCCESS from its own notices then).
            return outcome(reply_dsn(resp), reply_text(resp), reply_text(resp),
                           passed_on="dsn" in self.conn.extensions)
        return rejected(self.label, resp, "end of DATA")
