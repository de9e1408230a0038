"""A real SMTP server standing for the next hop in tests (aiosmtpd).

It records every message it accepts and can answer RCPT or DATA with a
scripted reply (4xx to force a deferral, 5xx to force a bounce), per
recipient or for the next N sessions. Given a TLS context it offers STARTTLS
(aiosmtpd's); given users it requires AUTH (PLAIN, LOGIN), offered only
under TLS unless ``auth_require_tls`` is false. Each message records whether
it came over TLS, who had logged in and its MAIL FROM parameters. With
``smtputf8`` it offers SMTPUTF8 (it never offers DSN).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from postfleet.core.testing.ports import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: str
    tls: bool = False
    login: str | None = None
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)

    def header(self, name: str) -> str | None:
        """One header's value, read from the header block only (cheap)."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        prefix = name.lower() + ":"
        for line in head.split("\r\n"):
            if line.lower().startswith(prefix):
                return line[len(prefix):].strip()
        return None


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    # recipient address -> reply used at RCPT time (e.g. "450 4.2.0 try later")
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # replies used for DATA, consumed in order; empty means "250 2.0.0 Ok"
    data_replies: list[str] = field(default_factory=list)
    arrived: asyncio.Event | None = None
    # Seconds each DATA takes to answer (a slow next hop builds concurrency).
    data_delay: float = 0.0
    # Transactions (MAIL .. end of DATA / RSET / QUIT) open now and at most:
    # how many deliveries the next hop sees at once.
    in_transaction: int = 0
    max_in_transaction: int = 0
    _open: set[int] = field(default_factory=set)

    def _begin(self, session: Any) -> None:
        if id(session) not in self._open:
            self._open.add(id(session))
            self.in_transaction += 1
            self.max_in_transaction = max(self.max_in_transaction, self.in_transaction)

    def _end(self, session: Any) -> None:
        if id(session) in self._open:
            self._open.discard(id(session))
            self.in_transaction -= 1

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]
    ) -> str:
        self._begin(session)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RSET(self, server: Any, session: Any, envelope: Any) -> str:
        self._end(session)
        return "250 2.0.0 Ok"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self._end(session)
        return "221 2.0.0 Bye"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            return await self._data(session, envelope)
        finally:
            self._end(session)

    async def _data(self, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                     str(session.peer), tls=session.ssl is not None,
                     login=session.auth_data if session.authenticated else None,
                     mail_options=list(envelope.mail_options))
        )
        return "250 2.0.0 Ok: queued"


@dataclass
class Users:
    """aiosmtpd's authenticator over a user -> password table."""

    passwords: dict[str, str]
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (mechanism, user)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        # handled=False: aiosmtpd then answers a failure itself (535 5.7.8).
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode()
        self.attempts.append((mechanism, user))
        ok = self.passwords.get(user) == auth_data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)


class SmtpSink:
    """``with SmtpSink() as sink: ... sink.port ... sink.messages``"""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *,
        tls_context: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
        auth_require_tls: bool = True, smtputf8: bool = False,
    ) -> None:
        self.handler = SinkHandler()
        self.host = host
        self.port = port or free_port(host)
        self.users = Users(users) if users is not None else None
        auth: dict[str, Any] = {}
        if self.users is not None:
            auth = dict(authenticator=self.users, auth_required=True,
                        auth_require_tls=auth_require_tls)
        self.controller = Controller(
            self.handler, hostname=host, port=self.port, data_size_limit=0,
            decode_data=False, server_hostname="sink.test", tls_context=tls_context,
            enable_SMTPUTF8=smtputf8, **auth,
        )

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def nexthop(self) -> str:
        return f"[{self.host}]:{self.port}"

    def start(self) -> SmtpSink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"sink got {len(self.messages)} of {count} messages")
            await asyncio.sleep(0.05)
        return self.messages
