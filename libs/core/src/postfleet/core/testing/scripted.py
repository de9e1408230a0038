"""A scripted TCP server for tests: each connection runs one coroutine.

For the peer behaviour no real server is made to show on demand (a greeting
refused, a connection dropped at RCPT, one LMTP reply per recipient), a test
writes the conversation as a coroutine over the connection's stream pair::

    async def refuse(reader: StreamReader, writer: StreamWriter) -> None:
        writer.write(b"554 go away\\r\\n")
        await writer.drain()

    async with scripted_server(refuse) as server:
        ...  # connect to server.host:server.port

The server listens on a free port of ``host`` (loopback by default) unless
given one. Each connection is closed when its script returns. A client that
hangs up mid-script is normal (the test judges what the client saw); any
other error in a script fails the test when the block ends, and scripts
still running then are cancelled, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Script", "ScriptedServer", "scripted_server"]

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# How a client hanging up shows in a script: not the script's fault.
_HANG_UPS = (ConnectionError, asyncio.IncompleteReadError)


@dataclass(frozen=True, slots=True)
class ScriptedServer:
    host: str
    port: int


@asynccontextmanager
async def scripted_server(
    script: Script, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ScriptedServer]:
    """Serve ``script`` on every connection to ``host:port`` (0: a free port)."""
    running: set[asyncio.Task[Any]] = set()
    failures: list[Exception] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # asyncio runs each connection as a task
        running.add(task)
        try:
            await script(reader, writer)
        except _HANG_UPS:
            pass
        except Exception as exc:
            failures.append(exc)
        finally:
            writer.close()
            running.discard(task)

    server = await asyncio.start_server(handle, host, port)
    try:
        yield ScriptedServer(host, int(server.sockets[0].getsockname()[1]))
    finally:
        server.close()
        for task in list(running):
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await server.wait_closed()
    if failures:
        raise failures[0]
