"""ingress-smtp: anvil(8) for the whole fleet -- per-client connection counts
and event rates held in NATS KV, so that N ingress replicas enforce one limit.

Why NATS KV and not the queue store: ingress-smtp has no database connection
(it never touches the queue), but every role is on the bus; the counters are
small, short-lived and may be lost without harm (a lost counter starts over,
which is what a restarted Postfix anvil does), which is what a KV bucket with
a time-to-live is for: entries nobody touched for a while expire by
themselves, so the bucket never grows with the clients ever seen.

Counting is exact across replicas: every change is a compare-and-set on the
key's revision (``update(..., last=revision)``, retried on a conflict), so two
replicas counting the same client at once both count.

- Connections (``smtpd_client_connection_count_limit``): one key per service
  and client, ``conn.<service>.<client>``, holding each replica's own count
  and when it last wrote it. A live replica rewrites its entries every
  ``heartbeat`` seconds; an entry not rewritten for three heartbeats (its
  replica died without saying goodbye) no longer counts, and the whole key
  expires with the bucket's time-to-live.
- Rates (connections, MAIL, RCPT, AUTH per ``anvil_rate_time_unit``): one key
  per service, event and client, ``rate.<event>.<service>.<client>``, holding
  the start of the current window and the events in it. As in Postfix's
  anvil the window starts with the client's first event and a new one starts
  once a time unit has passed, so a client cannot double its rate by
  straddling a clock boundary.

As in Postfix, counters are per service (the listener's name: smtp,
submission, ...) and client address; when NATS does not answer, smtpd goes
on without limits (Postfix's smtpd without anvil) and logs a warning.

Postfix parameters: anvil_rate_time_unit (read through the limits in
protocol.py: smtpd_client_connection_count_limit,
smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
smtpd_client_recipient_rate_limit, smtpd_client_auth_rate_limit,
smtpd_client_event_limit_exceptions).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from postfleet.core.bus.subjects import ANVIL_BUCKET

log = logging.getLogger(__name__)

Event = Literal["conn", "mail", "rcpt", "auth"]
HEARTBEAT = 30.0
CAS_TRIES = 50
_UNSAFE = re.compile(r"[^-_a-zA-Z0-9]")


def _token(text: str) -> str:
    """A KV key token: IP addresses and service names without '.' and ':'."""
    return _UNSAFE.sub(lambda m: "_" if m.group(0) == "." else "-", text)


class FleetAnvil:
    """The client counters of every ingress replica, in one NATS KV bucket."""

    def __init__(
        self, js: JetStreamContext, time_unit: float, *, heartbeat: float = HEARTBEAT
    ) -> None:
        self.js = js
        self.time_unit = time_unit
        self.heartbeat = heartbeat
        self.instance = uuid.uuid4().hex[:12]
        self._kv: KeyValue | None = None
        self._mine: collections.Counter[tuple[str, str]] = collections.Counter()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> FleetAnvil:
        ttl = max(2 * self.time_unit, 4 * self.heartbeat)
        try:
            self._kv = await self.js.key_value(ANVIL_BUCKET)
        except BucketNotFoundError:
            self._kv = await self.js.create_key_value(
                KeyValueConfig(bucket=ANVIL_BUCKET, history=1, ttl=ttl))
        self._task = asyncio.get_running_loop().create_task(
            self._beat(), name="anvil-heartbeat")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for service, ip in list(self._mine):
            await self._set_mine(service, ip, 0)
        self._mine.clear()

    # -- the events ------------------------------------------------------------------
    async def connect(self, service: str, ip: str) -> tuple[int, int] | None:
        """A new connection: (connections from ``ip`` now, connection rate), or
        None when the bus did not answer."""
        self._mine[(service, ip)] += 1
        count = await self._set_mine(service, ip, self._mine[(service, ip)])
        rate = await self.event("conn", service, ip)
        if count is None or rate is None:
            return None
        return count, rate

    async def disconnect(self, service: str, ip: str) -> None:
        self._mine[(service, ip)] -= 1
        left = self._mine[(service, ip)]
        if left <= 0:
            del self._mine[(service, ip)]
        await self._set_mine(service, ip, max(left, 0))

    async def event(self, event: Event, service: str, ip: str) -> int | None:
        """Count one ``event``: the client's events in the current time unit."""
        now = time.time()
        unit = self.time_unit

        def count(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None or now - float(old.get("start", 0)) >= unit:
                return {"start": now, "count": 1}
            return {"start": old["start"], "count": int(old.get("count", 0)) + 1}

        new = await self._cas(f"rate.{event}.{_token(service)}.{_token(ip)}", count)
        return None if new is None else int(new["count"])

    # -- connection counts -------------------------------------------------------------
    async def _set_mine(self, service: str, ip: str, mine: int) -> int | None:
        """Write this replica's count for the client; the fleet's total."""
        now = time.time()
        instance = self.instance

        def update(old: dict[str, Any] | None) -> dict[str, Any]:
            entries = {k: v for k, v in (old or {}).items() if self._live(v, now)}
            if mine > 0:
                entries[instance] = [mine, now]
            else:
                entries.pop(instance, None)
            return entries

        new = await self._cas(f"conn.{_token(service)}.{_token(ip)}", update)
        if new is None:
            return None
        return sum(int(v[0]) for v in new.values())

    def _live(self, entry: Any, now: float) -> bool:
        return (isinstance(entry, list) and len(entry) == 2
                and now - float(entry[1]) < 3 * self.heartbeat)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            for (service, ip), mine in list(self._mine.items()):
                if mine > 0:
                    await self._set_mine(service, ip, mine)

    # -- compare and set ------------------------------------------------------------------
    async def _cas(
        self, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any] | None:
        kv = self._kv
        assert kv is not None, "FleetAnvil.start() first"
        try:
            for _ in range(CAS_TRIES):
                old: dict[str, Any] | None = None
                revision: int | None = None
                try:
                    entry = await kv.get(key)
                    revision = entry.revision
                    old = json.loads(entry.value) if entry.value else None
                except (KeyNotFoundError, KeyDeletedError):
                    pass
                new = change(old)
                data = json.dumps(new, separators=(",", ":")).encode()
                try:
                    if revision is None:
                        await kv.create(key, data)
                    else:
                        await kv.update(key, data, last=revision)
                    return new
                except KeyWrongLastSequenceError:
                    continue  # another replica (or session) got there first
            log.warning("anvil: %s: too many concurrent updates, not counted", key)
        except Exception as exc:  # NATS unreachable, timeouts: go on without limits
            log.warning("anvil: %s: %s", key, exc or type(exc).__name__)
        return None
