"""Role processes under `postfleet run all`, supervised as Postfix's master(8)
supervises its daemons.

Each child is one process of a role in a named slot (``qmgr-1``,
``ingress-smtp-2``); the slot is its identity across restarts, so a
restarted qmgr takes its own leases back at once. Restart policy, as
master's: a process that dies after it ran normally (it had become ready),
or that was killed by a signal, is started again at once; only one that
keeps failing during start-up (exits with a status before it is ready) is
throttled, its delay doubling from RESTART_MIN_S to RESTART_MAX_S, and the
delay resets once a process has run for HEALTHY_AFTER_S.

Readiness is read from the role's own ``/readyz`` with a bare HTTP/1.0
request, so the launcher imports no HTTP client.

Why hand-written: no supervisor library runs asyncio child processes with
per-child environments and master-like throttling without a daemon of its
own.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from postfleet.core.roles import ROLE_MODULES

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 30.0
READY_POLL_S = 0.1


_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up in the launcher (once): a forked child must
    not import or load libraries before exec (the import lock may be held)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    return cast(Callable[..., int], ctypes.CDLL("libc.so.6", use_errno=True).prctl)


def die_with(parent: int) -> Callable[[], None]:
    """The child's step before exec: SIGTERM it when ``parent`` (the
    launcher) dies, even by kill -9, so no role outlives its supervisor
    (Linux PR_SET_PDEATHSIG). The signal is armed only for a parent alive
    when it is set: a launcher killed between fork and prctl would leave
    the child orphaned, so a child whose parent is no longer ``parent``
    ends itself at once. Called in the launcher; the returned step runs in
    the child."""
    prctl = _prctl()

    def arm() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


@dataclass
class Child:
    slot: str  # "qmgr-1", "ingress-smtp-2"
    role: str
    env: dict[str, str]
    http_port: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready_at: float | None = None
    throttle: float = RESTART_MIN_S
    restarts: int = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", ROLE_MODULES[self.role], env=self.env,
            # Own session: Ctrl-C reaches the launcher, which stops roles in order.
            start_new_session=True,
            preexec_fn=die_with(os.getpid()),
        )
        self.started = time.monotonic()
        self.ready_at = None

    @property
    def exited(self) -> bool:
        return self.proc is not None and self.proc.returncode is not None

    def restart_delay(self, now: float) -> float:
        """How long to wait before starting this child again, by how it died."""
        assert self.proc is not None and self.proc.returncode is not None
        if self.ready_at is not None and now - self.ready_at >= HEALTHY_AFTER_S:
            self.throttle = RESTART_MIN_S
        if self.ready_at is not None or self.proc.returncode < 0:
            return 0.0  # it had run normally, or a signal ended it: at once
        delay, self.throttle = self.throttle, min(self.throttle * 2, RESTART_MAX_S)
        return delay

    async def is_ready(self) -> bool:
        """One look at /readyz: True on a 200."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.http_port), 1)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), 2)
            return status.split(b" ")[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def watch_ready(self, stopping: asyncio.Event, timeout: float) -> bool:
        """Poll until ready (recording when), dead, stopped, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stopping.is_set() and not self.exited:
            if await self.is_ready():
                self.ready_at = time.monotonic()
                return True
            await asyncio.sleep(READY_POLL_S)
        return False
