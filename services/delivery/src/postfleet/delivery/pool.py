"""The SMTP connection cache: idle, connected sessions kept per nexthop.

Like Postfix's scache: after a delivery the session goes back to the cache
instead of being closed, and the next job for the same nexthop takes it
(most recently used first, so surplus sessions age out). An idle session is
closed (QUIT) after smtp_connection_cache_time_limit; a session is not
reused once older than smtp_connection_reuse_time_limit or after
smtp_connection_reuse_count_limit deliveries (0: no limit). The smtp
transport sends RSET on a cached session before using it again and drops it
on any error.

Postfix parameters: smtp_connection_cache_time_limit,
smtp_connection_reuse_time_limit, smtp_connection_reuse_count_limit,
smtp_quit_timeout.
"""

from __future__ import annotations

import asyncio
import time

from postfleet.delivery import metrics
from postfleet.delivery.session import Session
from postfleet.delivery.transaction import quit_and_close


class SessionPool:
    def __init__(
        self,
        *,
        cache_time_limit: float,
        reuse_time_limit: float,
        reuse_count_limit: int = 0,
        quit_timeout: float = 5.0,
    ) -> None:
        self.cache_time_limit = cache_time_limit
        self.reuse_time_limit = reuse_time_limit
        self.reuse_count_limit = reuse_count_limit
        self.quit_timeout = quit_timeout
        self._idle: dict[str, list[Session]] = {}
        self._open: set[Session] = set()
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def open_count(self) -> int:
        return len(self._open)

    def idle_count(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(v) for v in self._idle.values())

    def opened(self, session: Session) -> None:
        """Count a freshly connected session (busy until given back)."""
        self._open.add(session)
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_OPENED.inc()

    def take(self, key: str) -> Session | None:
        """An idle live session for this nexthop, or None."""
        idle = self._idle.get(key)
        while idle:
            session = idle.pop()
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            if session.alive:
                return session
            self.discard(session)
        return None

    def give(self, key: str, session: Session) -> None:
        """Return a session after a clean transaction (the caller must not use it again)."""
        session.uses += 1
        if self._closed or not session.alive:
            self.discard(session)
            return
        too_old = time.monotonic() - session.created >= self.reuse_time_limit
        too_used = 0 < self.reuse_count_limit <= session.uses
        if too_old or too_used or self.cache_time_limit <= 0:
            self.retire(session)
            return
        loop = asyncio.get_running_loop()
        session.expiry = loop.call_later(self.cache_time_limit, self._expire, key, session)
        self._idle.setdefault(key, []).append(session)

    def _expire(self, key: str, session: Session) -> None:
        session.expiry = None
        idle = self._idle.get(key)
        if idle and session in idle:
            idle.remove(session)
            if not idle:
                del self._idle[key]
            self.retire(session)

    def discard(self, session: Session) -> None:
        """Close without ceremony (after an error, the session state is unknown)."""
        session.close()
        self._forget(session)

    def retire(self, session: Session) -> None:
        """Close politely: QUIT in the background, then close."""
        self._forget(session)
        if not session.alive:
            session.close()
            return
        task = asyncio.get_running_loop().create_task(
            quit_and_close(session, self.quit_timeout))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    def _forget(self, session: Session) -> None:
        if session in self._open:
            self._open.discard(session)
            metrics.CONNECTIONS.dec()

    async def close(self, timeout: float = 5.0) -> None:
        """Close every idle session (QUIT) and stop caching."""
        self._closed = True
        for idle in self._idle.values():
            for session in idle:
                if session.expiry is not None:
                    session.expiry.cancel()
                self.retire(session)
        self._idle.clear()
        if self._quitting:
            _done, pending = await asyncio.wait(set(self._quitting), timeout=timeout)
            for task in pending:
                task.cancel()
        for session in list(self._open):  # busy sessions left by cancelled jobs
            self.discard(session)
