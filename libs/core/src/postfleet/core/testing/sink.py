"""A real SMTP server standing for the next hop in tests (aiosmtpd).

It records every message it accepts and can answer RCPT or DATA with a
scripted reply (4xx to force a deferral, 5xx to force a bounce), per
recipient or for the next N sessions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiosmtpd.controller import Controller

from postfleet.core.testing.ports import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    peer: str

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
                     str(session.peer))
        )
        return "250 2.0.0 Ok: queued"


class SmtpSink:
    """``with SmtpSink() as sink: ... sink.port ... sink.messages``"""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.handler = SinkHandler()
        self.host = host
        self.port = port or free_port(host)
        self.controller = Controller(
            self.handler, hostname=host, port=self.port, data_size_limit=0,
            decode_data=False, server_hostname="sink.test",
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
