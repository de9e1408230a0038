"""Fixtures for ingress-smtp: the role in-process on a free port, a real gRPC
server standing in for cleanup (another role, so a test double of the peer),
a raw SMTP dialog client for protocol-level assertions (optionally sending a
PROXY header first, optionally under TLS), and a test PKI made with the
``openssl`` command: a CA and server certificates for localhost/127.0.0.1.
Every test runs with the machine's resolver off (``no_system_resolver``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.core.smtp.replies import SmtpReply
from postfleet.core.testing.resolver_guard import SystemResolverGuard
from postfleet.ingress_smtp.anvil import FleetAnvil
from postfleet.ingress_smtp.listeners import Listeners
from postfleet.ingress_smtp.settings import IngressSettings, Listener
from postfleet.ingress_smtp.submit import CleanupClient


@pytest.fixture(autouse=True)
def _offline(no_system_resolver: SystemResolverGuard) -> SystemResolverGuard:
    """No ingress test asks the machine's resolver (names come from make_dns)."""
    return no_system_resolver


@dataclass
class Submitted:
    envelope: cleanup_pb2.Envelope
    chunks: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class FakeCleanup(cleanup_pb2_grpc.CleanupServicer):
    """Records what it is sent. mode: ok | not_queued | refuse | hang | gate | midstream."""

    mode: str = "ok"
    submitted: list[Submitted] = field(default_factory=list)
    # the queue ids smtpd asked for (it logged client= with them)
    requested: list[str] = field(default_factory=list)
    calls: int = 0
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def Submit(self, request_iterator: Any, context: Any) -> cleanup_pb2.SubmitReply:
        envelope: cleanup_pb2.Envelope | None = None
        chunks: list[bytes] = []
        async for request in request_iterator:
            if request.HasField("envelope"):
                envelope = request.envelope
            else:
                chunks.append(request.chunk)
                await self._midstream()
        assert envelope is not None
        return await self._answer(envelope, chunks, context)

    async def SubmitMessage(self, request: Any, context: Any) -> cleanup_pb2.SubmitReply:
        await self._midstream()
        return await self._answer(request.envelope, [request.body], context)

    async def _midstream(self) -> None:
        if self.mode == "midstream":  # the content is arriving: hang there
            self.entered.set()
            await asyncio.sleep(60)

    async def _answer(self, envelope: cleanup_pb2.Envelope, chunks: list[bytes],
                      context: Any) -> cleanup_pb2.SubmitReply:
        self.calls += 1
        self.requested += [v for k, v in context.invocation_metadata() or ()
                           if k == "postfleet-queue-id"]
        if self.mode == "not_queued":
            # cleanup's own "not queued" (its transaction failed)
            await context.abort(grpc.StatusCode.ABORTED, "queue file write error: db down")
        if self.mode == "refuse":
            return cleanup_pb2.SubmitReply(refusal=SmtpReply(550, "5.7.1", "Go away").to_proto())
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
    """Start the listeners in-process: make_ingress(snapshot=..., overrides={...},
    anvil=..., **settings); without an anvil no client limits apply."""
    started: list[tuple[Listeners, Any]] = []

    async def make(
        snapshot: RoutingSnapshot | None = None,
        overrides: dict[str, Any] | None = None,
        cleanup_address: str | None = None,
        anvil: FleetAnvil | None = None,
        **values: Any,
    ) -> Ingress:
        values.setdefault("smtpd_peername_lookup", False)
        listeners = values.pop("listeners", None) or [
            Listener(name="smtp", address="127.0.0.1", port=0, overrides=overrides or {})]
        settings = IngressSettings(
            myhostname="mx.postfleet.test",
            cleanup_address=cleanup_address or cleanup.address,
            listeners=listeners,
            **values,
        )
        routing = RoutingView(snapshot)
        channel = grpc.aio.insecure_channel(settings.cleanup_address)
        listeners = Listeners(settings, routing, CleanupClient(channel, settings.cleanup_timeout),
                              anvil)
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
    async def open(
        cls, port: int, host: str = "127.0.0.1", *, preamble: bytes = b"",
        tls: ssl.SSLContext | None = None,
    ) -> Dialog:
        """Connect; send ``preamble`` (a PROXY header) first; with ``tls``, do the
        handshake before the banner (wrapper mode)."""
        reader, writer = await asyncio.open_connection(host, port)
        dialog = cls(reader, writer)
        if preamble:
            await dialog.send(preamble)
        if tls is not None:
            await dialog.start_tls(tls)
        dialog.greeting = await dialog.reply()
        return dialog

    async def start_tls(self, context: ssl.SSLContext, hostname: str = "localhost") -> None:
        await asyncio.wait_for(self.writer.start_tls(context, server_hostname=hostname), 10)

    @property
    def tls_version(self) -> str | None:
        ssl_object = self.writer.get_extra_info("ssl_object")
        return None if ssl_object is None else str(ssl_object.version())

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

    async def data(self, content: bytes, timeout: float = 10) -> tuple[int, list[str]]:
        """DATA (answered 354), then ``content`` (ending in <CR><LF>.<CR><LF>):
        the reply to the content."""
        assert (await self.cmd("DATA"))[0] == 354
        await self.send(content)
        return await self.reply(timeout=timeout)

    async def transaction(self, sender: str, rcpts: list[str], content: bytes) -> str:
        """EHLO, MAIL, RCPT..., DATA, content; the final reply as "code text"."""
        assert (await self.cmd("EHLO client.test"))[0] == 250
        assert await self.line(f"MAIL FROM:<{sender}>") == "250 2.1.0 Ok"
        for rcpt in rcpts:
            assert await self.line(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Ok"
        code, lines = await self.data(content, timeout=30)
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
async def dialogs() -> AsyncIterator[Callable[..., Awaitable[Dialog]]]:
    opened: list[Dialog] = []

    async def open_dialog(port: int, **options: Any) -> Dialog:
        dialog = await Dialog.open(port, **options)
        opened.append(dialog)
        return dialog

    yield open_dialog
    for dialog in opened:
        await dialog.close()


@pytest.fixture
def smtp_transaction() -> Callable[..., Awaitable[str]]:
    """smtp_transaction(dialog, sender, rcpts, content): ``Dialog.transaction``."""
    return Dialog.transaction


# -- test PKI ---------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    """A test CA and what it issued; ``issue`` makes more server certificates."""

    directory: Path
    ca_file: Path
    cert_file: Path  # localhost + 127.0.0.1, CN=mx.postfleet.test
    key_file: Path

    def client_context(self, **versions: ssl.TLSVersion) -> ssl.SSLContext:
        """A client that verifies the chain and the name against the test CA only."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        for name, version in versions.items():
            setattr(context, name, version)
        return context

    def issue(self, name: str, common_name: str) -> tuple[Path, Path]:
        return _issue(self.directory, self.ca_file, name, common_name)


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _issue(directory: Path, ca_file: Path, name: str, common_name: str) -> tuple[Path, Path]:
    ext = directory / f"{name}.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl("req", *_EC, "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={common_name}", cwd=directory)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", ca_file.name, "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", f"{name}.crt",
             cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests make their CA with the openssl command, which is missing")
    directory = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", *_EC, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=postfleet test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    ca_file = directory / "ca.crt"
    cert, key = _issue(directory, ca_file, "server", "mx.postfleet.test")
    return Pki(directory, ca_file, cert, key)
