"""Group commit into the queue store: one transaction for many messages.

Each Submit waits for the commit that holds its message; concurrent
submissions ride the same transaction (like a database's group commit), so
fsyncs per second, not messages per second, bound the accept rate. A failed
transaction fails every submission in it: each client gets 451 and retries,
and nothing half-written stays behind (invariant 1).

The rows themselves are the queue store's (``postfleet.core.db.queue.enqueue``).

Postfix parameters: none (this is the queue file write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.queue import NewMessage, discard, enqueue, was_queued

log = logging.getLogger(__name__)


@dataclass
class Pending:
    message: NewMessage
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class QueueWriter:
    def __init__(
        self, engine: AsyncEngine, *, max_batch: int = 128,
        on_commit: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._on_commit = on_commit

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-writer")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def write(self, message: NewMessage) -> None:
        """Return once message and recipients are committed; raise if not."""
        item = Pending(message)
        await self._queue.put(item)
        await item.done

    async def committed(self, queue_id: str) -> bool:
        """Whether an earlier write of this queue id committed (a resend asks)."""
        return await was_queued(self._engine, queue_id)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception as exc:
                log.warning("queue write failed for %d message(s): %s", len(batch), exc)
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            for item in batch:
                if not item.done.done():
                    item.done.set_result(None)
            if self._on_commit:
                await self._on_commit(len(batch))

    async def _commit(self, batch: list[Pending]) -> None:
        live = [item for item in batch if not item.done.cancelled()]
        if not live:
            return
        async with self._engine.begin() as conn:
            await enqueue(conn, [item.message for item in live])
            # A client that went away while we waited for the write lock or
            # inserted (its smtpd died: the Submit was cancelled) never hears
            # 250 and will send again: leave its message out of the commit,
            # or the retry would be a duplicate. Only the COMMIT itself is
            # left as the window in which that can still happen.
            gone = [item.message.queue_id for item in live if item.done.cancelled()]
            if gone:
                await discard(conn, gone)
                log.info("%d submission(s) cancelled before commit: not queued", len(gone))
