"""A big queue does not slow the flow: with 1,000,000 deferred recipients in
PostgreSQL (inserted directly, due in an hour), the comparison's workload
(smtp-source, 1 KB, one recipient, 20 sessions, one message per connection)
runs through `postfleet run all` and is compared with the same workload on
an empty queue, in the same run; then `postfleet queue list` of the first
page is timed on the big queue.

    .venv/bin/python bench/bigqueue.py                 # 1,000,000 deferred, 5000 new
    .venv/bin/python bench/bigqueue.py --deferred 100000 -m 2000

A benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import PG_ADMIN, Postfleet, measure, sink_and_workdir

FILL = """
INSERT INTO messages (queue_id, sender, size, body, client_name, client_addr, helo, protocol,
    sasl_username, trace_id, content_filter, ret, envid, state, arrived_at, expires_at)
SELECT 'BIG' || lpad(n::text, 12, '0'), 'old@sender.test', 300,
    convert_to('Subject: deferred ' || n || E'\\r\\n\\r\\nbody\\r\\n', 'UTF8'),
    'client.test', '192.0.2.1', 'client.test', 'ESMTP', '', '', '', '', '', 'deferred',
    now() - interval '1 day', now() + interval '4 days'
FROM generate_series(1, $1) AS n;
"""
FILL_RCPTS = """
INSERT INTO recipients (queue_id, address, orig_rcpt, orcpt, notify, status, transport,
    nexthop, attempts, next_attempt_at, dsn_status, last_reply)
SELECT 'BIG' || lpad(n::text, 12, '0'), 'user' || n || '@far.example', '', '', '',
    'deferred', 'smtp', 'far.example', 3, now() + interval '1 hour', '4.4.1',
    'connect to far.example[192.0.2.9]:25: Connection timed out'
FROM generate_series(1, $1) AS n;
"""


async def fill(db: str, count: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{db}")
    started = time.monotonic()
    try:
        await conn.execute(FILL.replace("$1", str(count)))
        await conn.execute(FILL_RCPTS.replace("$1", str(count)))
        # A queue that grew over days has been vacuumed and analysed; one
        # filled in a second would otherwise have autovacuum walk its
        # million new rows in the middle of the measurement.
        for table in ("messages", "recipients"):
            await conn.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await conn.close()
    return time.monotonic() - started


def time_queue_list(var_dir: Path) -> tuple[float, int]:
    started = time.monotonic()
    out = subprocess.run([str(Path(sys.executable).parent / "postfleet"), "queue", "list",
                          "--var-dir", str(var_dir)], capture_output=True, text=True,
                         check=True)
    return time.monotonic() - started, len(out.stdout.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deferred", type=int, default=1_000_000)
    ap.add_argument("-m", "--messages", type=int, default=5000)
    ap.add_argument("-s", "--sessions", type=int, default=20)
    ap.add_argument("-r", "--runs", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[tuple[float, float]]] = {"empty": [], "big": []}
    listing: list[tuple[float, int]] = []
    with sink_and_workdir("postfleet-bigqueue-") as (work, sink_port):
        for i in range(args.runs):
            for kind in ("empty", "big"):
                mta = Postfleet(work / f"{kind}-{i}", sink_port, "postgres")
                mta.start()
                try:
                    if kind == "big":
                        took = asyncio.run(fill(mta.pg_name, args.deferred))
                        print(f"run {i + 1}: {args.deferred} deferred recipients "
                              f"inserted and vacuumed in {took:.0f} s", flush=True)
                    time.sleep(2)
                    run = measure(mta, args.messages, args.sessions, 1024, 900)
                    if kind == "big":
                        listing.append(time_queue_list(mta.work / "var"))
                finally:
                    mta.stop()
                results[kind].append((run.accept, run.e2e))
                print(f"run {i + 1} {kind} queue: accept {run.accept:.0f}/s, "
                      f"end to end {run.e2e:.0f}/s", flush=True)
    empty_e2e = statistics.median(e for _, e in results["empty"])
    big_e2e = statistics.median(e for _, e in results["big"])
    empty_acc = statistics.median(a for a, _ in results["empty"])
    big_acc = statistics.median(a for a, _ in results["big"])
    print(f"\nPostgreSQL, {args.messages} new messages (1 KB, {args.sessions} sessions, one per "
          f"connection); medians of {args.runs}:")
    print(f"  empty queue:              accept {empty_acc:.0f}/s, end to end {empty_e2e:.0f}/s")
    print(f"  {args.deferred:,} deferred: accept {big_acc:.0f}/s ({big_acc / empty_acc:.2f}x), "
          f"end to end {big_e2e:.0f}/s ({big_e2e / empty_e2e:.2f}x)")
    for seconds, lines in listing:
        print(f"  postfleet queue list (first page, {lines} lines): {seconds:.2f} s")


if __name__ == "__main__":
    main()
