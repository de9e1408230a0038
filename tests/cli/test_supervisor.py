"""The launcher's restart policy, as Postfix's master: at once after a normal
run or a signal, throttled (doubling) only while a role keeps failing at
start-up, and the throttle forgets once a role has run a while."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import psutil
import pytest

from postfleet.cli.supervisor import (
    HEALTHY_AFTER_S,
    RESTART_MAX_S,
    RESTART_MIN_S,
    Child,
    die_with,
)


@dataclass
class _Exited:
    returncode: int


def _died(child: Child, code: int, ready_at: float | None) -> None:
    child.proc = _Exited(code)  # type: ignore[assignment]
    child.ready_at = ready_at


def test_a_role_killed_by_a_signal_restarts_at_once_even_during_start_up() -> None:
    child = Child("qmgr-1", "qmgr", {}, 0)
    for _ in range(5):
        _died(child, -9, None)
        assert child.restart_delay(100.0) == 0.0


def test_a_role_that_ran_normally_restarts_at_once() -> None:
    child = Child("delivery-1", "delivery", {}, 0)
    _died(child, 1, ready_at=99.0)
    assert child.restart_delay(100.0) == 0.0


def test_failing_at_start_up_is_throttled_more_each_time_up_to_the_cap() -> None:
    child = Child("cleanup-1", "cleanup", {}, 0)
    delays = []
    for _ in range(8):
        _died(child, 1, None)
        delays.append(child.restart_delay(100.0))
    assert delays[:3] == [RESTART_MIN_S, 2 * RESTART_MIN_S, 4 * RESTART_MIN_S]
    assert max(delays) == RESTART_MAX_S == delays[-1]


def test_the_throttle_resets_after_a_healthy_run() -> None:
    child = Child("cleanup-1", "cleanup", {}, 0)
    for _ in range(4):
        _died(child, 1, None)
        child.restart_delay(100.0)
    _died(child, 1, ready_at=100.0)  # then it came up and ran a while
    assert child.restart_delay(100.0 + HEALTHY_AFTER_S) == 0.0
    _died(child, 1, None)
    assert child.restart_delay(200.0) == RESTART_MIN_S


async def test_readiness_is_read_from_readyz() -> None:
    async def readyz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(readyz, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await Child("x-1", "qmgr", {}, port).is_ready()
    finally:
        server.close()
    assert not await Child("x-1", "qmgr", {}, port).is_ready()  # nothing listens now


@pytest.mark.slow
def test_a_child_whose_launcher_died_before_it_armed_the_signal_ends_itself() -> None:
    """The launcher killed between fork and prctl: the child finds another
    parent than the one it was started for, and ends at once."""
    not_its_parent = os.getpid() + 1  # any pid but the child's parent (this one)
    child = subprocess.Popen(["sleep", "30"], preexec_fn=die_with(not_its_parent))
    assert child.wait(10) == -signal.SIGTERM


@pytest.mark.slow
def test_a_child_gets_sigterm_when_its_launcher_is_killed_9() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", (
            "import os, subprocess, sys, time\n"
            "from postfleet.cli.supervisor import die_with\n"
            "child = subprocess.Popen(['sleep', '30'], preexec_fn=die_with(os.getpid()))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(30)\n")],
        stdout=subprocess.PIPE)
    assert launcher.stdout is not None
    child = psutil.Process(int(launcher.stdout.readline()))
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
    launcher.kill()
    launcher.wait(10)
    child.wait(10)  # raises TimeoutExpired if the child outlived its launcher
