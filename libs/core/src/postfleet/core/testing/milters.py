"""A scripted milter for tests, on a loopback port in the test's own event
loop: it negotiates (asking for the macros it is told to), answers the first
events of each kind as scripted and ``continue`` after that, leaves
unanswered the events it is told to ignore (a hung milter), and records
every packet it got.

    script = MilterScript({wire.SMFIC_RCPT: [wire.packet(wire.SMFIR_REJECT)]})
    async with scripted_milter(script) as name:   # "inet:127.0.0.1:PORT"
        ...
    script.seen   # [(command, data), ...]

Postfix parameters: none.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from postfleet.core.milter import wire

# Events a milter never answers here: macros, abort, and the header fields
# and body chunks (it asks for SMFIP_NR_HDR and SMFIP_NR_BODY).
_NO_REPLY = frozenset({wire.SMFIC_MACRO, wire.SMFIC_ABORT, wire.SMFIC_HEADER, wire.SMFIC_BODY})


@dataclass
class MilterScript:
    replies: dict[bytes, list[bytes]] = field(default_factory=dict)
    # Events the milter reads and never answers (a hung milter).
    silent: frozenset[bytes] = frozenset()
    # Macros asked for in OPTNEG: SMFIM_* stage number -> names.
    macros: dict[int, str] = field(default_factory=dict)
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)

    def optneg(self) -> bytes:
        lists = b"".join(struct.pack("!L", stage) + names.encode() + b"\0"
                         for stage, names in self.macros.items())
        return wire.packet(wire.SMFIC_OPTNEG, struct.pack(
            "!LLL", 6, wire.ACTIONS_V6, wire.SMFIP_NR_HDR | wire.SMFIP_NR_BODY) + lists)


@contextlib.asynccontextmanager
async def scripted_milter(script: MilterScript) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!L", await reader.readexactly(4))
                packet = await reader.readexactly(length)
                command, data = packet[:1], packet[1:]
                script.seen.append((command, data))
                if command == wire.SMFIC_QUIT:
                    break
                if command in _NO_REPLY or command in script.silent:
                    continue
                if command == wire.SMFIC_OPTNEG:
                    writer.write(script.optneg())
                else:
                    answer = script.replies.pop(command, [wire.packet(wire.SMFIR_CONTINUE)])
                    writer.write(b"".join(answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"inet:127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
