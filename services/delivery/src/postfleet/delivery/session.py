"""The smtp client's session: an aiosmtplib client that the conversation
(transaction.py) drives as its ``Connection`` and that the connection cache
(pool.py) keeps between jobs.

aiosmtplib's errors are put in the conversation's terms: its timeouts are
TimeoutErrors already; anything else it raises means the connection is lost.

STARTTLS and AUTH are aiosmtplib's: ``starttls`` upgrades the connection
(and forgets the EHLO extensions, RFC 3207), ``authenticate`` runs one SASL
mechanism. Their refusals come back as replies, their TLS failures as
``ssl.SSLError`` (or the conversation's terms for a lost connection).

Postfix parameters: none of its own; the smtp transport passes in its
timeouts (smtp_*_timeout) and smtp_helo_name.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import SMTPProtocol

from postfleet.delivery.hostlookup import Address
from postfleet.delivery.transaction import ConnectionLost


@contextmanager
def _conversation_terms() -> Iterator[None]:
    try:
        yield
    except aiosmtplib.SMTPTimeoutError:
        raise  # a TimeoutError already
    except aiosmtplib.SMTPException as exc:
        raise ConnectionLost(str(exc)) from exc


@dataclass(eq=False)
class Session:
    """A connected SMTP client; EHLO or HELO done once handshake() returned.
    Timeouts of 0 mean no limit."""

    client: aiosmtplib.SMTP
    address: Address
    created: float = field(default_factory=time.monotonic)
    uses: int = 0
    expiry: asyncio.TimerHandle | None = None
    # What the session was opened under (the connection cache's key part).
    tls: str = ""  # the TLS summary logged, "" in clear text

    @classmethod
    def over(cls, sock: socket.socket, address: Address, helo_name: str) -> Session:
        """A session on a connected socket; nothing is read until greeting()."""
        try:
            # local_hostname given: aiosmtplib would otherwise ask getfqdn().
            client = aiosmtplib.SMTP(sock=sock, local_hostname=helo_name, start_tls=False)
        except BaseException:
            sock.close()
            raise
        return cls(client, address)

    @property
    def alive(self) -> bool:
        return self.client.is_connected

    @property
    def extensions(self) -> Mapping[str, str]:
        return self.client.esmtp_extensions

    async def greeting(self, timeout: float) -> SMTPResponse:
        with _conversation_terms():
            try:
                return await self.client.connect(timeout=timeout or None)
            except aiosmtplib.SMTPConnectResponseError as exc:  # not a 220
                return SMTPResponse(exc.code, exc.message)

    async def hello(self, verb: str, name: str, timeout: float) -> SMTPResponse:
        say = self.client.ehlo if verb == "EHLO" else self.client.helo
        with _conversation_terms():
            try:
                return await say(hostname=name, timeout=timeout or None)
            except aiosmtplib.SMTPHeloError as exc:  # not a 250
                return SMTPResponse(exc.code, exc.message)

    async def command(self, line: bytes, timeout: float) -> SMTPResponse:
        with _conversation_terms():
            return await self.client.execute_command(line, timeout=timeout or None)

    async def write_data(self, payload: bytes, timeout: float) -> None:
        # aiosmtplib's data() would dot-stuff and rewrite line endings itself:
        # the payload, framed once already, goes to its protocol directly. The
        # write is buffered; the end-of-data reply's timeout covers its sending.
        with _conversation_terms():
            self._protocol().write(payload)

    async def reply(self, timeout: float) -> SMTPResponse:
        with _conversation_terms():
            return await self._protocol().read_response(timeout=timeout or None)

    async def starttls(
        self, context: ssl.SSLContext, server_hostname: str | None, timeout: float
    ) -> SMTPResponse:
        """STARTTLS and the handshake. A refusal is the reply returned; a failed
        handshake raises ssl.SSLError, ConnectionLost or OSError (the
        connection is then unusable)."""
        with _conversation_terms():
            try:
                return await self.client.starttls(
                    server_hostname=server_hostname, tls_context=context,
                    timeout=timeout or None)
            except aiosmtplib.SMTPResponseException as exc:  # not a 220
                return SMTPResponse(exc.code, exc.message)

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        info = self.client.get_transport_info("ssl_object")
        return info if isinstance(info, ssl.SSLObject) else None

    @property
    def auth_mechanisms(self) -> list[str]:
        """The AUTH mechanisms the server announced, upper case."""
        return [m.upper() for m in self.client.server_auth_methods]

    async def authenticate(
        self, mechanism: str, username: str, password: str, timeout: float
    ) -> SMTPResponse:
        """AUTH with one mechanism (CRAM-MD5, PLAIN or LOGIN); the final reply."""
        method = {"CRAM-MD5": self.client.auth_crammd5, "PLAIN": self.client.auth_plain,
                  "LOGIN": self.client.auth_login}[mechanism]
        with _conversation_terms():
            try:
                return await method(username, password, timeout=timeout or None)
            except aiosmtplib.SMTPAuthenticationError as exc:
                return SMTPResponse(exc.code, exc.message)

    def close(self) -> None:
        self.client.close()

    def _protocol(self) -> SMTPProtocol:
        if self.client.protocol is None:
            raise ConnectionLost("Connection lost")
        return self.client.protocol
