"""Fixtures for ingress-smtp: the role in-process on a free port, a real gRPC
server standing in for cleanup (another role, so a test double of the peer),
and a raw SMTP dialog client for protocol-level assertions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.ingress_smtp.listeners import Listeners
from postfleet.ingress_smtp.settings import IngressSettings, Listener
from postfleet.ingress_smtp.submit import CleanupClient


@dataclass
class Submitted:
    envelope: cleanup_pb2.Envelope
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class FakeCleanup(cleanup_pb2_grpc.CleanupServicer):
    """Records what it is sent. mode: ok | unavailable | refuse | hang | gate | midstream."""

    mode: str = "ok"
    submitted: list[Submitted] = field(default_factory=list)
    calls: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def Submit(self, request_iterator: Any, context: Any) -> cleanup_pb2.SubmitReply:
        self.calls += 1
        envelope: cleanup_pb2.Envelope | None = None
        chunks: list[bytes] = []
        async for request in request_iterator:
            if request.HasField("envelope"):
                envelope = request.envelope
            else:
                chunks.append(request.chunk)
                if self.mode == "midstream":
                    self.entered.set()
                    await asyncio.sleep(60)
        assert envelope is not None
        if self.mode == "unavailable":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "queue file write error: db down")
        if self.mode == "refuse":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "550 5.7.1 Go away")
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "gate":
            self.entered.set()
            await self.release.wait()
        self.submitted.append(Submitted(envelope, chunks))
        return cleanup_pb2.SubmitReply(queue_id=f"4Q{len(self.submitted):04d}")


@dataclass
class CleanupServer:
    servicer: FakeCleanup
    server: Any
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(0)


@pytest.fixture
async def cleanup() -> AsyncIterator[CleanupServer]:
    servicer = FakeCleanup()
    server = grpc.aio.server()
    cleanup_pb2_grpc.add_CleanupServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield CleanupServer(servicer, server, port)
    finally:
        servicer.release.set()
        await server.stop(0)


@dataclass
class Ingress:
    listeners: Listeners
    routing: RoutingView
    settings: IngressSettings

    def port(self, name: str = "smtp") -> int:
        return self.listeners.ports[name]


MakeIngress = Callable[..., Awaitable[Ingress]]


@pytest.fixture
async def make_ingress(cleanup: CleanupServer) -> AsyncIterator[MakeIngress]:
    """Start the listeners in-process: make_ingress(snapshot=..., overrides={...}, **settings)."""
    started: list[tuple[Listeners, Any]] = []

    async def make(
        snapshot: RoutingSnapshot | None = None,
        overrides: dict[str, Any] | None = None,
        cleanup_address: str | None = None,
        **values: Any,
    ) -> Ingress:
        values.setdefault("smtpd_peername_lookup", False)
        settings = IngressSettings(
            myhostname="mx.postfleet.test",
            cleanup_address=cleanup_address or cleanup.address,
            listeners=[Listener(name="smtp", address="127.0.0.1", port=0,
                                overrides=overrides or {})],
            **values,
        )
        routing = RoutingView(snapshot)
        channel = grpc.aio.insecure_channel(settings.cleanup_address)
        listeners = Listeners(settings, routing, CleanupClient(channel, settings.cleanup_timeout))
        await listeners.start()
        started.append((listeners, channel))
        return Ingress(listeners, routing, settings)

    yield make
    for listeners, channel in started:
        await listeners.drain(0)
        await channel.close()


class Dialog:
    """A bare SMTP client: send exactly these bytes, read exactly that reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting: tuple[int, list[str]] = (0, [])

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Dialog:
        reader, writer = await asyncio.open_connection(host, port)
        dialog = cls(reader, writer)
        dialog.greeting = await dialog.reply()
        return dialog

    async def reply(self, timeout: float = 10) -> tuple[int, list[str]]:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw:
                raise ConnectionError(f"connection closed after {lines}")
            line = raw.decode().rstrip("\r\n")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str) -> tuple[int, list[str]]:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def line(self, command: str) -> str:
        """The reply to ``command`` as one "code text" string (last line)."""
        code, lines = await self.cmd(command)
        return f"{code} {lines[-1]}"

    async def closed(self, timeout: float = 5) -> bool:
        with contextlib.suppress(ConnectionError):
            data = await asyncio.wait_for(self.reader.read(), timeout)
            return data == b""
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def dialogs() -> AsyncIterator[Callable[[int], Awaitable[Dialog]]]:
    opened: list[Dialog] = []

    async def open_dialog(port: int) -> Dialog:
        dialog = await Dialog.open(port)
        opened.append(dialog)
        return dialog

    yield open_dialog
    for dialog in opened:
        await dialog.close()


async def transaction(dialog: Dialog, sender: str, rcpts: list[str], body: bytes) -> str:
    """EHLO, MAIL, RCPT..., DATA, body; the final reply as "code text"."""
    assert (await dialog.cmd("EHLO client.test"))[0] == 250
    assert await dialog.line(f"MAIL FROM:<{sender}>") == "250 2.1.0 Ok"
    for rcpt in rcpts:
        assert await dialog.line(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
    assert (await dialog.cmd("DATA"))[0] == 354
    await dialog.send(body)
    code, lines = await dialog.reply(timeout=30)
    return f"{code} {lines[-1]}"


@pytest.fixture
def smtp_transaction() -> Callable[..., Awaitable[str]]:
    return transaction
