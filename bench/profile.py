"""Where the time goes: every role of `postfleet run all` sampled with py-spy
while smtp-source sends the comparison's workload (1 KB, one recipient, 20
sessions, one message per connection), then per role the CPU seconds per
message (from /proc) and the functions that take the most samples, by their
own time and with what they call.

    .venv/bin/python bench/profile.py                 # SQLite, 5000 messages
    .venv/bin/python bench/profile.py --db postgres --top 25

A benchmark: it prints figures and asserts nothing. py-spy needs root (or
ptrace rights), as the benchmarks run here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import PG_ADMIN, Postfleet, _cpu_ticks, scrape, sink_and_workdir

CLK_TCK = 100


def role_pids(root: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "-m" in cmd:
            name = cmd[cmd.index("-m") + 1].removeprefix("postfleet.")
            key = name if name not in found else f"{name}#2"
            found[key] = proc.pid
        elif cmd and cmd[0].endswith("nats-server"):
            found["nats-server"] = proc.pid
    found["launcher"] = root
    return found


COUNTERS = ("postfleet_db_statements_total", "postfleet_db_commits_total",
            'postfleet_bus_messages_total{direction="out"}',
            'postfleet_bus_messages_total{direction="in"}')


def work_counts(mta: Postfleet) -> dict[str, float]:
    """The work counters summed over every role (their /metrics)."""
    ports = json.loads((mta.work / "var" / "run.json").read_text())["http_ports"]
    totals = dict.fromkeys(COUNTERS, 0.0)
    for port in ports.values():
        samples = scrape(port)
        for name in COUNTERS:
            totals[name] += samples.get(name, 0.0)
    return totals


async def _wal_syncs() -> float:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    try:
        return float(await conn.fetchval("SELECT wal_sync FROM pg_stat_wal"))
    finally:
        await conn.close()


def summarize(raw: Path, top: int) -> list[str]:
    """py-spy's raw (collapsed) stacks -> the top functions by self and total samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  for f in stack.split(";") if f]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    out = [f"    {samples} samples; own time:"]
    out += [f"      {100 * n / samples:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("    with callees:")
    out += [f"      {100 * n / samples:5.1f}%  {f}" for f, n in total.most_common(top)
            if not f.startswith(("<module>", "run (", "_run_once", "run_forever",
                                 "run_until_complete", "_run (events"))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("-m", "--messages", type=int, default=5000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--raw-dir", type=Path, help="keep py-spy's raw stacks here, one file a role")
    args = ap.parse_args()
    with sink_and_workdir("postfleet-profile-") as (work, sink_port):
        mta = Postfleet(work / "mta", sink_port, args.db)
        try:
            mta.start()
            time.sleep(2)
            pids = role_pids(mta.root_pid())
            cpu0 = {name: _cpu_ticks(pid) for name, pid in pids.items()}
            spies = {
                name: subprocess.Popen(
                    [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw",
                     "--rate", "200", "--nonblocking", "--gil", "-o", str(work / f"{name}.txt"),
                     "--pid", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for name, pid in pids.items() if name != "nats-server"
            }
            before = mta.delivered()
            counts0 = work_counts(mta)
            wal0 = asyncio.run(_wal_syncs()) if args.db == "postgres" else 0.0
            t0 = time.monotonic()
            subprocess.run(["/usr/sbin/smtp-source", "-s", str(args.sessions), "-m",
                            str(args.messages), "-l", "1024", "-f", "bench@sender.test",
                            "-t", "sink@example.test", f"127.0.0.1:{mta.port}"],
                           capture_output=True, check=True)
            while mta.delivered() < before + args.messages:
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            time.sleep(1)  # the last results' acks and statements
            counts = {k: v - counts0[k] for k, v in work_counts(mta).items()}
            wal = asyncio.run(_wal_syncs()) - wal0 if args.db == "postgres" else 0.0
            cpu = {name: (_cpu_ticks(pid) - cpu0[name]) / CLK_TCK for name, pid in pids.items()}
            for spy in spies.values():
                spy.send_signal(2)  # SIGINT: py-spy writes what it has
            for spy in spies.values():
                spy.wait(30)
        finally:
            mta.stop()
        print(f"postfleet ({args.db}): {args.messages} messages end to end in {elapsed:.1f} s "
              f"({args.messages / elapsed:.0f} msg/s)")
        print("CPU per message by process (ms):")
        for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
            print(f"  {name:14} {1000 * seconds / args.messages:6.2f}")
        print(f"  {'total':14} {1000 * sum(cpu.values()) / args.messages:6.2f}")
        print("Round trips per message (all roles):")
        for name, value in counts.items():
            print(f"  {name:48} {value / args.messages:6.2f}")
        if args.db == "postgres":
            print(f"  {'WAL flushes (pg_stat_wal.wal_sync, server-wide)':48} "
                  f"{wal / args.messages:6.2f}")
        for name in sorted(spies):
            raw = work / f"{name}.txt"
            if raw.exists():
                if args.raw_dir:
                    args.raw_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copy(raw, args.raw_dir / raw.name)
                print(f"\n  {name}:")
                print("\n".join(summarize(raw, args.top)))


if __name__ == "__main__":
    main()
