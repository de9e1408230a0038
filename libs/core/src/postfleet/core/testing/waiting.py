"""Waiting in tests with a deadline, never a fixed sleep.

Tests say what must happen and by when at the latest; how fast it happens
is for the benchmarks. ``eventually`` polls a check until it holds and fails
the test, naming what it waited for, once the deadline has passed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually"]

T = TypeVar("T")

POLL_S = 0.05


@overload
async def eventually(
    check: Callable[[], Awaitable[T]], timeout: float = ..., what: str = ...
) -> T: ...


@overload
async def eventually(check: Callable[[], T], timeout: float = ..., what: str = ...) -> T: ...


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """The first truthy value ``check()`` returns (it may be a coroutine
    function); AssertionError with the last value after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what or check}: last {last!r}")
        await asyncio.sleep(POLL_S)
