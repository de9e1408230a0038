"""Chaos benchmark: a tagged mail load while role processes are killed with
kill -9 at random, then the count of what was accepted, delivered, lost and
duplicated, how long the queue took to drain after the load, and the rate
the load achieved (postfleet.core.testing.chaos does the work).

Two setups, as issue 8 describes them:

  runall  `postfleet run all` on its embedded defaults (SQLite, the bundled
          NATS); the launcher restarts what dies.
  fleet   PostgreSQL with two replicas of every role (the test cluster),
          each killed process started again at once in its slot, as
          Kubernetes restarts a container (a qmgr keeps its identity).

    .venv/bin/python bench/chaos.py                  # runall, 3000 at 100/s, kill every 3 s
    .venv/bin/python bench/chaos.py --mode fleet
    .venv/bin/python bench/chaos.py -m 300 --kills 8 # the short version the tests run

A benchmark, not a test: it prints figures and asserts nothing (the short
version runs as a test in tests/e2e/test_chaos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
from pathlib import Path

from postfleet.core.testing.chaos import ChaosPlan, ChaosResult, run_all_chaos, run_chaos
from postfleet.core.testing.sink import SmtpSink


async def fleet_chaos(args: ChaosPlan, work: Path) -> ChaosResult:
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
                for role in cluster.all_roles:
                    await asyncio.to_thread(cluster.scale, role, 2)

                def pick(role: str, rng: random.Random) -> bool:
                    if role not in cluster.roles:
                        return False  # not in this fleet (the filter role)
                    replicas = cluster.replicas(role)
                    if not replicas:
                        return False
                    victim = rng.choice(replicas)
                    victim.kill()
                    victim.start(wait=False)  # restarted in its slot, at once
                    return True

                try:
                    return await run_chaos(args, cluster.smtp_port, sink, pick)
                finally:
                    await asyncio.to_thread(cluster.stop)
    finally:
        nats.stop()


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
    plan = ChaosPlan(args.messages, args.rate, args.sessions, args.every, args.kills,
                     args.roles, args.give_up, args.drain_timeout)
    with tempfile.TemporaryDirectory(prefix="postfleet-chaos-") as tmp:
        run = run_all_chaos if args.mode == "runall" else fleet_chaos
        result = asyncio.run(run(plan, Path(tmp)))
    print(f"postfleet chaos ({args.mode}): {args.messages} messages at {args.rate:g}/s over "
          f"{args.sessions} sessions, kill -9 every {args.every:g} s")
    print(result.summary(args.messages))


if __name__ == "__main__":
    main()
