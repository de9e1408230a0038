"""Work counters every role exports on /metrics, so an operator (and
bench/profile.py) can see what one message costs in round trips:

- ``postfleet_db_statements_total``: statements this process sent to the
  queue store;
- ``postfleet_db_commits_total``: transactions it committed -- each that
  wrote is one WAL flush, as the queue store runs (SQLite
  ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on``); a read-only
  one flushes nothing;
- ``postfleet_bus_messages_total{direction}``: NATS messages it published
  (``out``) and received (``in``), JetStream acknowledgements and API
  requests included -- nats-py's own counters, read when scraped.

Counting is an integer increment per event; nothing here connects to
anything. Postfix has no such counters (its queue is files); these are
postfleet's own.

Postfix parameters: none.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

DB_STATEMENTS = Counter("postfleet_db_statements", "Statements sent to the queue store")
DB_COMMITS = Counter("postfleet_db_commits", "Queue-store transactions committed")

_clients: weakref.WeakSet[Any] = weakref.WeakSet()


def count_statement(*_args: Any) -> None:
    DB_STATEMENTS.inc()


def count_commit(*_args: Any) -> None:
    DB_COMMITS.inc()


def watch_bus_client(client: Any) -> None:
    """Count this NATS client's messages (its ``stats``) on /metrics."""
    _clients.add(client)


class _BusCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("postfleet_bus_messages",
                                     "NATS messages published (out) and received (in)",
                                     labels=["direction"])
        clients = list(_clients)
        family.add_metric(["out"], sum(c.stats.get("out_msgs", 0) for c in clients))
        family.add_metric(["in"], sum(c.stats.get("in_msgs", 0) for c in clients))
        yield family


REGISTRY.register(_BusCollector())
