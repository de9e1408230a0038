"""Chaos under load, shared by the chaos benchmark (bench/chaos.py) and its
short version in the tests: a tagged mail load while role processes are
killed with kill -9 at random, then what was accepted, delivered, lost and
duplicated, how long the queue took to drain after the load, and the rate
the load achieved.

``run_all_chaos`` does it to `postfleet run all` (SQLite, the bundled NATS;
the launcher restarts what dies); the benchmark adds a fleet on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from postfleet.core.roles import MONOLITH_ROLES, ROLE_MODULES
from postfleet.core.sockets import free_port
from postfleet.core.testing.load import TAG_HEADER, LoadReport, send_load, tally
from postfleet.core.testing.ports import wait_port
from postfleet.core.testing.sink import SmtpSink

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


# Kill one process of a role (chosen with the generator); False if none ran.
Pick = Callable[[str, random.Random], bool]


@dataclass
class ChaosPlan:
    messages: int = 3000
    rate: float = 100.0  # messages per second
    sessions: int = 10
    every: float = 3.0  # seconds between kills
    kills: int = 40
    roles: str = ""  # comma-separated; empty: every role
    give_up: float = 120.0  # a client gives a message up after retrying this long
    drain_timeout: float = 360.0


@dataclass
class ChaosResult:
    report: LoadReport
    kills: list[str] = field(default_factory=list)
    drain_s: float | None = None
    arrived: list[str] = field(default_factory=list)
    kill_times: list[float] = field(default_factory=list)  # monotonic, one per kill

    def duplicate_story(self) -> list[str]:
        """Each duplicated tag with when it was accepted and the kill before
        that: what a failing run needs to say which kill cost the replies."""
        counts = collections.Counter(self.arrived)
        lines = []
        for tag in sorted(t for t, n in counts.items() if n > 1):
            at = self.report.accepted_at.get(tag)
            if at is None:
                continue
            before = [(t, r) for t, r in zip(self.kill_times, self.kills, strict=False) if t <= at]
            kill = (f"{before[-1][1]} killed {at - before[-1][0]:.2f} s before"
                    if before else "no kill before it")
            lines.append(f"    {tag}: {counts[tag]} copies, accepted at "
                         f"{at - self.report.started:.2f} s; {kill}")
        return lines

    def summary(self, total: int) -> str:
        counted = tally(self.report, self.arrived)
        drain = f"{self.drain_s:.1f} s" if self.drain_s is not None else "NOT DRAINED"
        return "\n".join([
            f"  messages sent:      {total} (tagged), {len(self.kills)} kill -9",
            f"  accepted:           {counted.accepted} ({counted.accepted / total:.1%}), "
            f"gave up {len(self.report.gave_up)}, refused {len(self.report.refused)}",
            f"  delivered:          {counted.delivered}",
            f"  lost:               {len(counted.lost)}",
            f"  duplicated:         {counted.duplicates} ({counted.duplicate_rate:.3%}); "
            f"arrived but never acknowledged: {counted.unexpected}",
            f"  drain after load:   {drain}",
            f"  load achieved:      {self.report.rate:.1f} msg/s over "
            f"{self.report.elapsed:.1f} s ({self.report.temp_failures} client retries)",
            f"  kills by role:      {_by_role(self.kills)}",
            *self.duplicate_story(),
        ])


def _by_role(kills: list[str]) -> str:
    counts: dict[str, int] = {}
    for k in kills:
        counts[k] = counts.get(k, 0) + 1
    return ", ".join(f"{r} {n}" for r, n in sorted(counts.items()))


def _role_of(proc: psutil.Process) -> str | None:
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return None
    for role, module in ROLE_MODULES.items():
        if module in cmd:
            return role
    return None


def _role_processes(root: int) -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.Process(root).children(recursive=True):
        role = _role_of(proc)
        if role in MONOLITH_ROLES:
            found.setdefault(role, []).append(proc)
    return found


async def _killer(pick: Pick, every: float, kills: int, roles: list[str],
                  log: list[str], times: list[float]) -> None:
    """A kill every ``every`` seconds until ``kills`` were made, load or not
    (as the issue's harness: 40 kills, 3 s apart)."""
    rng = random.Random(8)
    while len(log) < kills:
        await asyncio.sleep(every)
        role = rng.choice(roles)
        if await asyncio.to_thread(pick, role, rng):
            log.append(role)
            times.append(time.monotonic())


async def _drain(sink: SmtpSink, report: LoadReport, timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        arrived = {m.header(TAG_HEADER) for m in sink.messages}
        if all(t in arrived for t in report.accepted):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    return None


def _tags(sink: SmtpSink) -> list[str]:
    return [t for m in sink.messages if (t := m.header(TAG_HEADER))]


async def run_all_chaos(args: ChaosPlan, work: Path) -> ChaosResult:
    port = free_port()
    with SmtpSink() as sink:
        config = work / "postfleet.yaml"
        config.write_text(yaml.safe_dump({
            "myhostname": "mx.chaos.test",
            "ingress_smtp": {"listeners": [{"name": "smtp", "address": "127.0.0.1",
                                            "port": port}],
                             "smtpd_peername_lookup": False},
            "routing": {"relay_domains": ["example.test"],
                        "transport_maps": {"example.test": f"smtp:{sink.nexthop}"}},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
        out = open(work / "launcher.out", "wb")
        launcher = subprocess.Popen(
            [POSTFLEET, "run", "all", "--config", str(config), "--var-dir", str(work / "var")],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            await asyncio.to_thread(wait_port, port, "127.0.0.1", 90)
            await _started(work / "launcher.out", launcher)

            def pick(role: str, rng: random.Random) -> bool:
                procs = _role_processes(launcher.pid).get(role, [])
                if not procs:
                    return False
                try:
                    rng.choice(procs).kill()
                except psutil.Error:
                    return False
                return True

            return await run_chaos(args, port, sink, pick)
        finally:
            launcher.terminate()
            try:
                launcher.wait(60)
            except subprocess.TimeoutExpired:
                launcher.kill()
            out.close()


async def _started(out: Path, launcher: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until `run all` has started every role (it prints the admin API last)."""
    deadline = time.monotonic() + timeout
    while b"queue admin API" not in out.read_bytes():
        if launcher.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"postfleet run all did not start:\n{out.read_text()[-3000:]}")
        await asyncio.sleep(0.2)


async def run_chaos(args: ChaosPlan, port: int, sink: SmtpSink, pick: Pick) -> ChaosResult:
    kills: list[str] = []
    kill_times: list[float] = []
    roles = args.roles.split(",") if args.roles else list(MONOLITH_ROLES)
    killer = asyncio.create_task(
        _killer(pick, args.every, args.kills, roles, kills, kill_times))
    report = await send_load(port, args.messages, sessions=args.sessions, rate=args.rate,
                             give_up_after=args.give_up)
    # Drain time counts from the load's end, while the kills go on.
    drain = await _drain(sink, report, args.drain_timeout)
    await killer
    await asyncio.sleep(args.every)  # what the last kill might still disturb
    return ChaosResult(report, kills, drain, _tags(sink), kill_times)


