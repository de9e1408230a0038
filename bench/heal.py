"""How long each fault takes to heal, measured.

A steady trickle of tagged mail (20 msg/s over 4 sessions) runs through a
whole postfleet (every role a process, on PostgreSQL and a NATS of its
own); one fault is injected; the benchmark records, for the messages that
were in the system around the fault, the longest time from acceptance to
arrival at the sink, and how long after the fault the queue was empty
again with everything accepted delivered.

Faults, one per round, each with the process restarted at once the way
`postfleet run all` or Kubernetes restarts it (a qmgr keeps its identity):

  kill -9 qmgr, delivery, cleanup, ingress-smtp (one of two), and a qmgr
  that does not come back (its work is retaken by another replica after
  one lease); NATS restarted; PostgreSQL restarted.

    .venv/bin/python bench/heal.py
    .venv/bin/python bench/heal.py --only qmgr --only nats
    .venv/bin/python bench/heal.py --sink-delay 0   # a next hop that answers at once

The sink waits --sink-delay seconds (0.5) before each 250, so a fault
always finds jobs in flight.

A benchmark: it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from postfleet.core.bus.connect import connect, ensure_bus
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import publish_snapshot
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.load import TAG_HEADER, send_load
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.pgcluster import PgCluster
from postfleet.core.testing.sink import SmtpSink

FAULTS = ["qmgr", "delivery", "cleanup", "ingress-smtp", "qmgr-gone", "nats", "postgres"]


class Arrivals:
    """When each tag of this round arrived at the sink, polled every 50 ms."""

    def __init__(self, sink: SmtpSink, prefix: str) -> None:
        self.sink = sink
        self.prefix = prefix
        self.at: dict[str, float] = {}
        self._seen = len(sink.messages)
        self._expected: set[str] | None = None
        self.complete = asyncio.Event()

    def expect(self, tags: object) -> None:
        self._expected = set(tags)  # type: ignore[call-overload]

    async def watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = time.monotonic()
            for m in self.sink.messages[self._seen:]:
                tag = m.header(TAG_HEADER)
                if tag and tag.startswith(self.prefix) and tag not in self.at:
                    self.at[tag] = now
            self._seen = len(self.sink.messages)
            if self._expected is not None and self._expected <= self.at.keys():
                self.complete.set()
            await asyncio.sleep(0.05)


async def _round(fault: str, cluster: Cluster, nats: NatsServer, pg: PgCluster,
                 sink: SmtpSink) -> str:
    prefix = f"{fault}-"
    arrivals = Arrivals(sink, prefix)
    stop = asyncio.Event()
    watcher = asyncio.create_task(arrivals.watch(stop))
    load = asyncio.create_task(send_load(cluster.smtp_port, 300, sessions=4, rate=20,
                                         prefix=prefix))
    await asyncio.sleep(5)
    fault_at = time.monotonic()
    await asyncio.to_thread(_inject, fault, cluster, nats, pg)
    report = await load
    arrivals.expect(report.accepted)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(arrivals.complete.wait(), 600)
    stop.set()
    await watcher
    missing = [t for t in report.accepted if t not in arrivals.at]
    if missing:
        return f"{fault:14} NOT HEALED after 600 s: {len(missing)} accepted messages missing"
    waits = sorted(arrivals.at[t] - report.accepted_at[t] for t in report.accepted)
    # The messages the fault caught: accepted before it, not yet delivered then.
    caught = [arrivals.at[t] for t in report.accepted
              if report.accepted_at[t] <= fault_at < arrivals.at[t]]
    healed = (max(caught) - fault_at) if caught else 0.0
    return (f"{fault:14} all caught delivered {healed:5.1f} s after the fault "
            f"({len(caught)} caught); slowest {waits[-1]:5.1f} s, p50 {waits[len(waits) // 2]:.2f}"
            f" s; {len(report.accepted)}/300 accepted, {report.temp_failures} client retries")


def _inject(fault: str, cluster: Cluster, nats: NatsServer, pg: PgCluster) -> None:
    if fault in ("qmgr", "delivery", "cleanup"):
        cluster.roles[fault].kill()
        cluster.roles[fault].start(wait=False)
    elif fault == "ingress-smtp":
        cluster.replicas("ingress-smtp")[-1].kill()
        cluster.replicas("ingress-smtp")[-1].start(wait=False)
    elif fault == "qmgr-gone":
        # Two replicas; one dies for good: its claims come back after one lease.
        cluster.replicas("qmgr")[-1].kill()
    elif fault == "nats":
        nats.stop()
        time.sleep(2)
        nats.start()
    elif fault == "postgres":
        pg.stop("fast")
        time.sleep(2)
        pg.start()


async def main_async(args: argparse.Namespace) -> None:
    faults = args.only or FAULTS
    with tempfile.TemporaryDirectory(prefix="postfleet-heal-") as tmp:
        work = Path(tmp)
        pg = PgCluster().init().start()
        nats = NatsServer(work / "nats").start()
        try:
            with SmtpSink() as sink:
                # A next hop that takes its time, so every fault finds jobs
                # in flight (about rate x delay of them) rather than an idle
                # queue.
                sink.handler.data_delay = args.sink_delay
                routing = {"relay_domains": ["example.test"], "myhostname": "mx.heal.test",
                           "transport_maps": {"example.test": f"smtp:{sink.nexthop}"}}
                config = {"myhostname": "mx.heal.test", "routing": routing,
                          "qmgr": {"queue_run_delay": args.queue_run_delay}}
                cluster = Cluster(work / "cluster", pg.url(), nats.url, config=config,
                                  env={"POSTFLEET_INGRESS_REUSE_PORT": "true"})
                nc = await connect(nats.url, "heal")
                await publish_snapshot(await ensure_bus(nc), RoutingSnapshot.from_config(routing))
                await nc.close()
                from postfleet.core.db.engine import create_engine
                from postfleet.core.db.migrate import upgrade

                engine = create_engine(pg.url())
                await upgrade(engine)
                await engine.dispose()
                await asyncio.to_thread(cluster.start)
                await asyncio.to_thread(cluster.scale, "ingress-smtp", 2)
                print(f"queue_run_delay {args.queue_run_delay}, qmgr_lease_time 30s "
                      "(defaults but the first); 20 msg/s during each fault; the sink "
                      f"takes {args.sink_delay:g} s per message:")
                for fault in faults:
                    if fault == "qmgr-gone":
                        await asyncio.to_thread(cluster.scale, "qmgr", 2)
                    line = await _round(fault, cluster, nats, pg, sink)
                    print("  " + line, flush=True)
                await asyncio.to_thread(cluster.stop)
        finally:
            nats.stop()
            pg.remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", choices=FAULTS, default=[])
    ap.add_argument("--sink-delay", type=float, default=0.5,
                    help="seconds the sink waits before answering DATA (jobs in flight)")
    ap.add_argument("--queue-run-delay", default="300s",
                    help="qmgr's periodic scan (Postfix default 300s)")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
