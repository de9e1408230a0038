"""The routing snapshot in NATS KV: publish it, read it, follow it live.

Roles hold a ``RoutingView`` whose ``snapshot`` is swapped atomically when the
KV watch delivers a new version (DESIGN invariant 6: routing changes without
restarts). Until a snapshot is published a role uses Postfix's defaults, which
are closed (no relaying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import routing_bucket
from postfleet.core.routing.snapshot import RoutingSnapshot

log = logging.getLogger(__name__)


async def publish_snapshot(js: JetStreamContext, snapshot: RoutingSnapshot) -> RoutingSnapshot:
    """Store ``snapshot`` with the next version number; returns what was stored."""
    kv = await routing_bucket(js)
    version = 1
    with contextlib.suppress(KeyNotFoundError):
        current = await kv.get(subjects.ROUTING_KEY)
        if current.value:
            version = RoutingSnapshot.from_json(current.value).version + 1
    stored = snapshot.model_copy(update={"version": version})
    await kv.put(subjects.ROUTING_KEY, stored.to_json())
    return stored


async def read_snapshot(js: JetStreamContext) -> RoutingSnapshot | None:
    kv = await routing_bucket(js)
    try:
        entry = await kv.get(subjects.ROUTING_KEY)
    except KeyNotFoundError:
        return None
    return RoutingSnapshot.from_json(entry.value) if entry.value else None


class RoutingView:
    """The current snapshot, kept fresh by a KV watch."""

    def __init__(self, default: RoutingSnapshot | None = None) -> None:
        self.snapshot = default or RoutingSnapshot()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[RoutingSnapshot], None]] = []
        self.loaded = asyncio.Event()

    def on_change(self, callback: Callable[[RoutingSnapshot], None]) -> None:
        self._listeners.append(callback)

    async def start(self, js: JetStreamContext) -> None:
        kv = await routing_bucket(js)
        current = await read_snapshot(js)
        if current is not None:
            self._apply(current)
        self._task = asyncio.create_task(self._watch(kv), name="routing-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _apply(self, snapshot: RoutingSnapshot) -> None:
        if snapshot.version < self.snapshot.version:
            return
        self.snapshot = snapshot
        self.loaded.set()
        log.info("routing snapshot version %d in force", snapshot.version)
        for cb in self._listeners:
            cb(snapshot)

    async def _watch(self, kv: KeyValue) -> None:
        while True:
            try:
                watcher = await kv.watch(subjects.ROUTING_KEY)
                while True:
                    try:
                        entry = await watcher.updates(timeout=30)
                    except TimeoutError:
                        continue
                    if entry is None or not entry.value:
                        continue
                    try:
                        self._apply(RoutingSnapshot.from_json(entry.value))
                    except ValueError:
                        log.exception("ignoring an invalid routing snapshot")
            except asyncio.CancelledError:
                raise
            except Exception:
                # NATS restarts: watch again once the connection is back.
                log.warning("routing watch lost; retrying", exc_info=True)
                await asyncio.sleep(1)
