"""postfleet beside Postfix: the same workload, the same box, one run, a ratio.

Postfix's own smtp-source sends N messages (1 KB, one recipient, S sessions,
one message per connection: no -d) into an MTA that relays them to
Postfix's smtp-sink. The MTAs, measured alternately in one run (R runs
each): a private Postfix instance from Debian's package (its own config,
queue and log directories), `postfleet run all` on SQLite, and
`postfleet run all` on PostgreSQL.

Per run it records:
- accept rate: N / smtp-source's wall time;
- end-to-end rate: N / time until the MTA has every message delivered
  (Postfix: `status=sent` lines in its log; postfleet: qmgr's delivered
  counter) -- both count a message once the sink said 250 and the MTA
  recorded it;
- CPU seconds per message, summed over every process of the MTA (the
  supervisor, its children, reaped children, NATS), from /proc; with
  PostgreSQL, the server's own CPU is reported beside it;
- peak RSS and PSS per process (and their sums), sampled from /proc;
- accept latency p50/p99: a probe client beside the load sends one
  message every 100 ms and times end-of-data -> 250 (the probe's messages
  are part of the end-to-end count).

    .venv/bin/python bench/compare.py                  # 5000 msgs, 20 sessions, 3 runs each
    .venv/bin/python bench/compare.py -m 2000 -r 1     # a quick look
    .venv/bin/python bench/compare.py --only postfleet-sqlite
    .venv/bin/python bench/compare.py --only postfleet-sqlite --set qmgr_scan_interval=0.05

A benchmark: it prints figures and asserts nothing. Needs root (Postfix's
master) and the Debian packages postfix (smtp-source, smtp-sink, the
daemons), which `make peers` installs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import yaml

from postfleet.core.sockets import free_port
from postfleet.core.testing.ports import wait_port

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = 1024


# -- the MTAs -------------------------------------------------------------------


class Mta(Protocol):
    name: str
    port: int

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def root_pid(self) -> int: ...
    def delivered(self) -> int: ...


@dataclass
class Postfix:
    """A private Postfix: its own config_directory, queue and log."""

    work: Path
    sink_port: int
    name: str = "postfix"
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.conf = self.work / "conf"
        self.log = self.work / "maillog"

    def start(self) -> None:
        for d in (self.conf, self.work / "queue", self.work / "data"):
            d.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)
        shutil.chown(self.work / "data", "postfix")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        lines = [f"{self.port} inet n - n - - smtpd"]
        for line in master:
            if line.startswith("smtp ") and " inet " in line:
                continue  # our own port instead of 25
            fields = line.split()
            if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
                fields[4] = "n" if fields[4] in ("y", "-") else fields[4]  # chroot = n
                line = " ".join(fields)
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        for extra in ("dynamicmaps.cf",):
            if Path(f"/etc/postfix/{extra}").exists():
                shutil.copy(f"/etc/postfix/{extra}", self.conf / extra)
        # Debian's defaults otherwise: fsync'ed queue files, as postfleet commits.
        (self.conf / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.work / 'queue'}
data_directory = {self.work / 'data'}
maillog_file = {self.log}
maillog_file_prefixes = {self.work}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.postfix-bench.test
mydestination =
mynetworks = 127.0.0.0/8
relay_domains = example.test
transport_maps = inline:{{example.test=smtp:[127.0.0.1]:{self.sink_port}}}
smtp_dns_support_level = disabled
alias_maps =
alias_database =
""")
        done = subprocess.run(["script", "-qc", f"postfix -c {self.conf} start", "/dev/null"],
                              capture_output=True, text=True)
        if "starting the Postfix mail system" not in done.stdout:
            raise SystemExit(f"private Postfix did not start: {done.stdout}{done.stderr}")
        wait_port(self.port, timeout=30)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)
        time.sleep(1)

    def root_pid(self) -> int:
        return int((self.work / "data" / "master.lock").read_text().split()[0])

    def delivered(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("status=sent")
        except FileNotFoundError:
            return 0


@dataclass
class Postfleet:
    """`postfleet run all` on SQLite (embedded default) or PostgreSQL."""

    work: Path
    sink_port: int
    db: str
    name: str = ""
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    pg_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # --set: parameters on top

    def __post_init__(self) -> None:
        self.name = f"postfleet-{self.db}"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config = {
            "myhostname": "mx.bench.test",
            "ingress_smtp": {"listeners": [{"name": "smtp", "address": "127.0.0.1",
                                            "port": self.port}],
                             "smtpd_peername_lookup": False},
            "routing": {"relay_domains": ["example.test"],
                        "mynetworks": ["127.0.0.0/8"],
                        "transport_maps": {
                            "example.test": f"smtp:[127.0.0.1]:{self.sink_port}"}},
        }
        config.update(self.extra)
        (self.work / "postfleet.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
        if self.db == "postgres":
            self.pg_name = asyncio.run(make_pg())
            env["POSTFLEET_DATABASE_URL"] = (
                f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.pg_name}")
        out = open(self.work / "launcher.log", "wb")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "postfleet"), "run", "all", "--config",
             str(self.work / "postfleet.yaml"), "--var-dir", str(self.work / "var")],
            env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while b"queue admin API" not in (self.work / "launcher.log").read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((self.work / "launcher.log").read_text()[-3000:])
            time.sleep(0.2)
        state = json.loads((self.work / "var" / "run.json").read_text())
        self.qmgr_port = state["http_ports"]["qmgr-1"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.pg_name:
            asyncio.run(drop_pg(self.pg_name))

    def root_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def delivered(self) -> int:
        return delivered(self.qmgr_port)


def scrape(http_port: int) -> dict[str, float]:
    """A role's /metrics as {sample name with labels: value}."""
    url = f"http://127.0.0.1:{http_port}/metrics"
    samples = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def delivered(qmgr_port: int) -> int:
    """Recipients qmgr has recorded as delivered."""
    return int(scrape(qmgr_port).get('postfleet_qmgr_recipients_total{status="delivered"}', 0))


async def make_pg() -> str:
    import asyncpg

    name = f"pf_compare_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_pg(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


@contextlib.contextmanager
def sink_and_workdir(prefix: str) -> Iterator[tuple[Path, int]]:
    """A private directory (readable by postfix and nobody) and Postfix's
    smtp-sink on a free port, the next hop of every benchmark."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        work.chmod(0o755)
        port = free_port()
        sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{port}",
                                 "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
            yield work, port
        finally:
            sink.terminate()
            sink.wait(10)


# -- what is measured -----------------------------------------------------------


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of one process (reaped children included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return sum(int(v) for v in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU of a process tree: the root (with what it reaped) and the live children."""
    pids = [root]
    try:
        pids += [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.Error:
        pass
    return sum(_cpu_ticks(p) for p in pids) / CLK_TCK


def _name(proc: psutil.Process) -> str:
    cmd = proc.cmdline()
    if "-m" in cmd:
        return cmd[cmd.index("-m") + 1].removeprefix("postfleet.")
    if cmd and "postfleet" in cmd[0]:
        return "launcher"
    return proc.name()


class MemorySampler(threading.Thread):
    """Peak RSS and PSS per process name (the sum of one sample's processes too)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.rss: dict[str, int] = {}
        self.pss: dict[str, int] = {}
        self.total_rss = 0
        self.total_pss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(0.5)

    def sample(self) -> None:
        procs = [psutil.Process(self.root), *psutil.Process(self.root).children(recursive=True)]
        total_rss = total_pss = 0
        counts: dict[str, int] = {}
        for proc in procs:
            try:
                name, mem = _name(proc), proc.memory_full_info()
            except psutil.Error:
                continue
            counts[name] = counts.get(name, 0) + 1
            key = name if counts[name] == 1 else f"{name}#{counts[name]}"
            self.rss[key] = max(self.rss.get(key, 0), mem.rss)
            self.pss[key] = max(self.pss.get(key, 0), mem.pss)
            total_rss += mem.rss
            total_pss += mem.pss
        self.total_rss = max(self.total_rss, total_rss)
        self.total_pss = max(self.total_pss, total_pss)


class LatencyProbe(threading.Thread):
    """One message every ``every`` seconds; times end-of-data -> 250."""

    def __init__(self, port: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.every = every
        self.samples: list[float] = []
        self.sent = 0
        self.stop = threading.Event()

    def run(self) -> None:
        body = b"Subject: probe\r\n\r\n" + b"x" * 1000 + b"\r\n"
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=60) as smtp:
                    smtp.ehlo("probe.test")
                    smtp.mail("probe@sender.test")
                    smtp.rcpt("probe@example.test")
                    t0 = time.monotonic()
                    code, _ = smtp.data(body)
                    if code == 250:
                        self.samples.append(time.monotonic() - t0)
                        self.sent += 1
            except (OSError, smtplib.SMTPException):
                pass
            self.stop.wait(max(0.0, self.every - (time.monotonic() - start)))


@dataclass
class Run:
    mta: str
    accept: float
    e2e: float
    cpu_per_msg_ms: float
    rss: dict[str, int]
    pss: dict[str, int]
    total_rss: int
    total_pss: int
    p50_ms: float
    p99_ms: float
    db_cpu_per_msg_ms: float = 0.0  # the PostgreSQL server's, when postfleet uses it


def postgres_cpu_seconds() -> float:
    """CPU of the local PostgreSQL server: every postgres process, the
    postmaster counting the backends it reaped (the bench's own database
    is the only busy one while it runs)."""
    pids = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]
    return sum(_cpu_ticks(p) for p in pids) / CLK_TCK


def measure(mta: Mta, messages: int, sessions: int, size: int, timeout: float) -> Run:
    root = mta.root_pid()
    memory = MemorySampler(root)
    probe = LatencyProbe(mta.port)
    cpu0 = tree_cpu_seconds(root)
    uses_pg = mta.name == "postfleet-postgres"
    db0 = postgres_cpu_seconds() if uses_pg else 0.0
    before = mta.delivered()
    memory.start()
    probe.start()
    t0 = time.monotonic()
    src = subprocess.run(
        ["/usr/sbin/smtp-source", "-s", str(sessions), "-m", str(messages), "-l", str(size),
         "-f", "bench@sender.test", "-t", "sink@example.test", f"127.0.0.1:{mta.port}"],
        capture_output=True, text=True)
    accept = time.monotonic() - t0
    probe.stop.set()
    probe.join()
    if src.returncode != 0:
        raise SystemExit(f"{mta.name}: smtp-source failed: {src.stdout}{src.stderr}")
    target = before + messages + probe.sent
    while mta.delivered() < target:
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"{mta.name}: {mta.delivered() - before}/{target - before} "
                             f"delivered after {timeout:.0f}s")
        time.sleep(0.05)
    e2e = time.monotonic() - t0
    memory.stop.set()
    memory.join()
    cpu = tree_cpu_seconds(root) - cpu0
    db_cpu = postgres_cpu_seconds() - db0 if uses_pg else 0.0
    lat = sorted(probe.samples) or [float("nan")]
    return Run(mta.name, messages / accept, messages / e2e,
               1000 * cpu / (messages + probe.sent), memory.rss, memory.pss,
               memory.total_rss, memory.total_pss,
               1000 * lat[len(lat) // 2], 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
               1000 * db_cpu / (messages + probe.sent))


# -- the run --------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def report(runs: list[Run], names: list[str], args: argparse.Namespace) -> None:
    print(f"\n{args.messages} messages of {args.size} B, one recipient, {args.sessions} "
          f"sessions, one message per connection (smtp-source without -d); "
          f"{args.runs} run(s) each, alternating; medians")
    by = {n: [r for r in runs if r.mta == n] for n in names}
    med = {n: {k: statistics.median(getattr(r, k) for r in rs)
               for k in ("accept", "e2e", "cpu_per_msg_ms", "p50_ms", "p99_ms")}
           for n, rs in by.items() if rs}
    base = med.get("postfix")
    print(f"{'MTA':18} {'accept/s':>9} {'e2e/s':>8} {'e2e ratio':>9} {'CPU ms/msg':>10} "
          f"{'CPU ratio':>9} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} {'PSS MiB':>8}")
    for n, m in med.items():
        rs = by[n]
        ratio = f"{m['e2e'] / base['e2e']:.2f}" if base else "-"
        cpu_ratio = f"{m['cpu_per_msg_ms'] / base['cpu_per_msg_ms']:.2f}" if base else "-"
        print(f"{n:18} {m['accept']:9.0f} {m['e2e']:8.0f} {ratio:>9} "
              f"{m['cpu_per_msg_ms']:10.2f} {cpu_ratio:>9} {m['p50_ms']:7.1f} "
              f"{m['p99_ms']:7.1f} {_mib(max(r.total_rss for r in rs)):>8} "
              f"{_mib(max(r.total_pss for r in rs)):>8}")
    for n, rs in by.items():
        if rs and any(r.db_cpu_per_msg_ms for r in rs):
            db = statistics.median(r.db_cpu_per_msg_ms for r in rs)
            total = med[n]["cpu_per_msg_ms"] + db
            ratio = f", {total / base['cpu_per_msg_ms']:.2f}x Postfix's" if base else ""
            print(f"  {n}: the PostgreSQL server's own CPU adds {db:.2f} ms/msg "
                  f"(total {total:.2f} ms/msg{ratio})")
    print("\nall runs (accept/s, e2e/s):")
    for n, rs in by.items():
        print(f"  {n:18} " + ", ".join(f"{r.accept:.0f}/{r.e2e:.0f}" for r in rs))
    print("\npeak RSS / PSS per process (MiB, last run):")
    for n, rs in by.items():
        if rs:
            last = rs[-1]
            parts = [f"{k} {_mib(v)}/{_mib(last.pss.get(k, 0))}"
                     for k, v in sorted(last.rss.items())]
            print(f"  {n}: " + ", ".join(parts))


def _parameter(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, yaml.safe_load(value)


def _one_run(name: str, here: Path, sink_port: int, args: argparse.Namespace) -> Run:
    here.mkdir()
    mta: Mta = (Postfix(here, sink_port) if name == "postfix" else
                Postfleet(here, sink_port, name.split("-")[1], extra=dict(args.set)))
    mta.start()
    try:
        time.sleep(2)  # settle
        return measure(mta, args.messages, args.sessions, args.size, args.timeout)
    finally:
        mta.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--messages", type=int, default=5000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("-l", "--size", type=int, default=1024)
    ap.add_argument("-r", "--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--set", action="append", default=[], type=_parameter,
                    metavar="NAME=YAML",
                    help="a postfleet parameter on top of the benchmark's configuration "
                         "(e.g. --set qmgr_scan_interval=0.05), to measure its effect")
    ap.add_argument("--only", action="append", default=[],
                    choices=["postfix", "postfleet-sqlite", "postfleet-postgres"])
    args = ap.parse_args()
    for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink", "/usr/sbin/postfix"):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} missing: run `make peers` (Debian package postfix)")
    names = args.only or ["postfix", "postfleet-sqlite", "postfleet-postgres"]
    runs: list[Run] = []
    with sink_and_workdir("postfleet-compare-") as (work, sink_port):
        for i in range(args.runs):
            for name in names:
                run = _one_run(name, work / f"{name}-{i}", sink_port, args)
                runs.append(run)
                print(f"run {i + 1} {name}: accept {run.accept:.0f}/s, end to end "
                      f"{run.e2e:.0f}/s, {run.cpu_per_msg_ms:.2f} ms CPU/msg, "
                      f"RSS {_mib(run.total_rss)} MiB, PSS {_mib(run.total_pss)} MiB, "
                      f"latency p50 {run.p50_ms:.1f} ms p99 {run.p99_ms:.1f} ms", flush=True)
    report(runs, names, args)


if __name__ == "__main__":
    main()
