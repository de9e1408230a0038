"""Deadlines for tests: wait for a condition instead of timing how long it took.

    await eventually(lambda: len(ingress.listeners.sessions) == 0, timeout=2)

Tests say what must happen and by when; how fast it happens is the
benchmarks' business (bench/), since a loaded machine is slow but not wrong.

Postfix parameters: none.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02


async def eventually(
    check: Callable[[], T | Awaitable[T]], timeout: float = 5.0, what: str = ""
) -> T:
    """Poll ``check`` (plain or async) until it returns something truthy, and
    return that; fail the test if it has not by ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        result = await value if inspect.isawaitable(value) else value
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(
                f"{what or 'the condition'} not true within {timeout}s (last: {result!r})")
        await asyncio.sleep(POLL_SECONDS)
