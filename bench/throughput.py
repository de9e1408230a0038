"""Throughput benchmark: Postfix's smtp-source sends N messages into
`postfleet run all`; Postfix's smtp-sink receives them.

Prints the accept rate (smtp-source's wall time), the end-to-end rate (until
qmgr has applied N delivered results) and the peak RSS of every role.
A benchmark, not a test: it asserts nothing about speed.

    .venv/bin/python bench/throughput.py [--db sqlite|postgres] [-m 5000] [-s 20] [-l 1024]
                                         [--filter]

--filter sends every message through the built-in filter role
(content_filter = filter:) with a header_checks table and no scanner: each
message then takes two queue entries and two deliveries (to the filter, then
the copy to the sink), so N messages are done at 2N delivered results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import MemorySampler, delivered, drop_pg, make_pg

from postfleet.core.sockets import free_port
from postfleet.core.testing.ports import wait_port

ROOT = Path(__file__).resolve().parent.parent


# A header_checks table of the usual kind: none of its rules matches
# smtp-source's messages, so every message is scanned to the end.
HEADER_CHECKS = r"""/^Subject:.*\b(viagra|lottery|winner)\b/    REJECT looks like spam
/^Content-(Type|Disposition):.*name="?[^"]*\.(exe|scr|pif|bat|com)"?/  REJECT executable attachment
/^X-Mailer:.*(bulk|mass) mailer/                  DISCARD
/^Received:.*\[10\.66\.6\.\d+\]/              HOLD from a quarantined network
/^From:.*@spammer\.example/                       REJECT
/^To:.*undisclosed-recipients/                    WARN
/^Subject:\s*$/                                   WARN empty subject
/^Message-ID:.*@localhost>/                       INFO
if /^Received:/
/from .*\(unknown\b/                              WARN unknown client
endif
/^X-Spam-Flag: YES/                               IGNORE
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("-m", "--messages", type=int, default=5000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("-l", "--size", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--filter", action="store_true",
                    help="through the built-in filter role, header checks only")
    args = ap.parse_args()
    for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"):
        if not os.path.exists(tool):
            raise SystemExit(f"{tool} missing: run `make peers` (Debian package postfix)")

    work = Path(tempfile.mkdtemp(prefix="postfleet-bench-"))
    os.chmod(work, 0o755)
    smtp_port, sink_port = free_port(), free_port()
    config = {
        "myhostname": "mx.bench.test",
        "ingress_smtp": {"listeners": [{"name": "smtp", "address": "127.0.0.1",
                                        "port": smtp_port}]},
        "routing": {"relay_domains": ["example.test"],
                    "transport_maps": {"example.test": f"smtp:[127.0.0.1]:{sink_port}"}},
    }
    if args.filter:
        (work / "header_checks").write_text(HEADER_CHECKS)
        config["content_filter"] = "filter:"
        config["filter"] = {"header_checks": [f"pcre:{work / 'header_checks'}"]}
    (work / "postfleet.yaml").write_text(yaml.safe_dump(config))
    target = args.messages * (2 if args.filter else 1)
    env = dict(os.environ)
    pg_name = None
    if args.db == "postgres":
        pg_name = asyncio.run(make_pg())
        env["POSTFLEET_DATABASE_URL"] = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}",
                             "1024"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    launcher = subprocess.Popen(
        [str(Path(sys.executable).parent / "postfleet"), "run", "all", "--config",
         str(work / "postfleet.yaml"), "--var-dir", str(work / "var")],
        env=env, stdout=open(work / "launcher.log", "w"), stderr=subprocess.STDOUT)
    sampler = MemorySampler(launcher.pid)
    try:
        wait_port(smtp_port)
        time.sleep(2)  # every role ready
        qmgr_port = json.loads((work / "var" / "run.json").read_text())["http_ports"]["qmgr-1"]
        sampler.start()
        t0 = time.monotonic()
        src = subprocess.run(
            ["/usr/sbin/smtp-source", "-s", str(args.sessions), "-m", str(args.messages),
             "-l", str(args.size), "-d", "-f", "bench@sender.test", "-t", "sink@example.test",
             f"127.0.0.1:{smtp_port}"], capture_output=True, text=True)
        t_accept = time.monotonic() - t0
        if src.returncode != 0:
            raise SystemExit(f"smtp-source failed: {src.stdout}{src.stderr}")
        last_report = 0.0
        while (done := delivered(qmgr_port)) < target:
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"only {done:.0f}/{target} delivered in {args.timeout}s")
            if time.monotonic() - last_report > 5:
                print(f"  … {done:.0f}/{target} delivered", file=sys.stderr)
                last_report = time.monotonic()
            time.sleep(0.05)
        t_e2e = time.monotonic() - t0
        sampler.stop.set()
        sampler.join()
        through = ", through the built-in filter (header checks)" if args.filter else ""
        print(f"postfleet throughput ({args.db}{through}): {args.messages} messages of "
              f"{args.size} B over {args.sessions} sessions")
        print(f"  accept rate:     {args.messages / t_accept:8.1f} msg/s ({t_accept:.1f} s)")
        print(f"  end-to-end rate: {args.messages / t_e2e:8.1f} msg/s ({t_e2e:.1f} s)")
        print("  peak RSS per process:")
        for name, rss in sorted(sampler.rss.items()):
            print(f"    {name:14} {rss / 2**20:7.1f} MiB")
        return 0
    finally:
        sampler.stop.set()
        launcher.terminate()
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
        sink.terminate()
        sink.wait(10)
        if pg_name:
            asyncio.run(drop_pg(pg_name))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
