"""Chaos benchmark: a tagged mail load while role processes are killed with
kill -9 at random, then the count of what was accepted, delivered, lost and
duplicated, how long the queue took to drain after the load, and the rate
the load achieved.

Two setups, as issue 8 describes them:

  runall  `postfleet run all` on its embedded defaults (SQLite, the bundled
          NATS); the launcher restarts what dies.
  fleet   PostgreSQL with two replicas of every role (the test cluster),
          each killed process started again at once in its slot, as
          Kubernetes restarts a container (a qmgr keeps its identity).

    .venv/bin/python bench/chaos.py                  # runall, 3000 at 100/s, kill every 3 s
    .venv/bin/python bench/chaos.py --mode fleet
    .venv/bin/python bench/chaos.py -m 300 --kills 8 # the short version CI runs

A benchmark, not a test: it prints figures and asserts nothing (the short
version runs as a test in tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
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


@dataclass
class ChaosResult:
    report: LoadReport
    kills: list[str] = field(default_factory=list)
    drain_s: float | None = None
    arrived: list[str] = field(default_factory=list)

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


async def _killer(pick: object, every: float, kills: int, roles: list[str],
                  log: list[str]) -> None:
    """A kill every ``every`` seconds until ``kills`` were made, load or not
    (as the issue's harness: 40 kills, 3 s apart)."""
    rng = random.Random(8)
    while len(log) < kills:
        await asyncio.sleep(every)
        role = rng.choice(roles)
        if await asyncio.to_thread(pick, role, rng):  # type: ignore[operator]
            log.append(role)


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


async def run_all_chaos(args: argparse.Namespace, work: Path) -> ChaosResult:
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

            return await _run(args, port, sink, pick)
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


async def fleet_chaos(args: argparse.Namespace, work: Path) -> ChaosResult:
    from postfleet.core.testing.cluster import Cluster
    from postfleet.core.testing.databases import fresh_postgres
    from postfleet.core.testing.nats import NatsServer

    nats = NatsServer(work / "nats").start()
    try:
        async with fresh_postgres() as url:
            with SmtpSink() as sink:
                config = {"myhostname": "mx.chaos.test",
                          "routing": {"relay_domains": ["example.test"],
                                      "transport_maps": {
                                          "example.test": f"smtp:{sink.nexthop}"}}}
                cluster = Cluster(work / "cluster", url, nats.url, config=config,
                                  env={"POSTFLEET_INGRESS_REUSE_PORT": "true"})
                cluster.roles["qmgr"].env["POSTFLEET_QMGR_OWNER"] = "chaos-qmgr"
                from postfleet.core.bus.connect import connect, ensure_bus
                from postfleet.core.routing.snapshot import RoutingSnapshot
                from postfleet.core.routing.store import publish_snapshot

                nc = await connect(nats.url, "chaos")
                await publish_snapshot(await ensure_bus(nc), RoutingSnapshot.from_config(
                    {**config["routing"], "myhostname": "mx.chaos.test"}))
                await nc.close()
                await asyncio.to_thread(cluster.start)
                for role in MONOLITH_ROLES:
                    await asyncio.to_thread(cluster.scale, role, 2)

                def pick(role: str, rng: random.Random) -> bool:
                    replicas = cluster.replicas(role)
                    if not replicas:
                        return False
                    victim = rng.choice(replicas)
                    victim.kill()
                    victim.start(wait=False)  # restarted in its slot, at once
                    return True

                try:
                    return await _run(args, cluster.smtp_port, sink, pick)
                finally:
                    await asyncio.to_thread(cluster.stop)
    finally:
        nats.stop()


async def _run(args: argparse.Namespace, port: int, sink: SmtpSink, pick: object) -> ChaosResult:
    kills: list[str] = []
    roles = args.roles.split(",") if args.roles else list(MONOLITH_ROLES)
    killer = asyncio.create_task(_killer(pick, args.every, args.kills, roles, kills))
    report = await send_load(port, args.messages, sessions=args.sessions, rate=args.rate,
                             give_up_after=args.give_up)
    # Drain time counts from the load's end, while the kills go on.
    drain = await _drain(sink, report, args.drain_timeout)
    await killer
    await asyncio.sleep(args.every)  # what the last kill might still disturb
    return ChaosResult(report, kills, drain, _tags(sink))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["runall", "fleet"], default="runall")
    parser.add_argument("-m", "--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=100.0, help="messages per second")
    parser.add_argument("-s", "--sessions", type=int, default=10)
    parser.add_argument("--every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--roles", default="",
                        help="kill only these roles (comma-separated; default: every role)")
    parser.add_argument("--give-up", type=float, default=120.0,
                        help="a client gives a message up after retrying this long")
    parser.add_argument("--drain-timeout", type=float, default=360.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="postfleet-chaos-") as tmp:
        run = run_all_chaos if args.mode == "runall" else fleet_chaos
        result = asyncio.run(run(args, Path(tmp)))
    print(f"postfleet chaos ({args.mode}): {args.messages} messages at {args.rate:g}/s over "
          f"{args.sessions} sessions, kill -9 every {args.every:g} s")
    print(result.summary(args.messages))


if __name__ == "__main__":
    main()
