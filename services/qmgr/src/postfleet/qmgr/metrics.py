"""qmgr's Prometheus metrics (served on the role's /metrics), with the names
and labels of Postfix's postfix_exporter where it has them:

- ``postfix_showq_message_size_bytes{queue}`` and
  ``postfix_showq_message_age_seconds{queue}``: histograms of the messages in
  each queue (incoming, active, deferred, hold) -- ``_count`` is the queue's
  size. postfix_exporter reads them from showq; here qmgr reads the queue
  store every ``queue_shape_interval`` seconds (every qmgr replica reports the
  whole queue: take ``max by (queue)``, not the sum);
- ``postfix_qmgr_messages_inserted_size_bytes`` and
  ``postfix_qmgr_messages_inserted_receipients`` (sic, the exporter's
  spelling): what qmgr's ``from=<…>, size=…, nrcpt=…`` line says;
- ``postfix_qmgr_messages_removed_total``: its ``removed`` lines.

Defined once at import; registering connects to nothing.

Postfix parameters: none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from postfleet.core.db.queue import AGE_BOUNDS, SIZE_BOUNDS, QueueShape

INSERTED_SIZE = Histogram(
    "postfix_qmgr_messages_inserted_size_bytes",
    "Size of messages inserted into the active queue, in bytes.",
    buckets=SIZE_BOUNDS)
INSERTED_RCPTS = Histogram(
    "postfix_qmgr_messages_inserted_receipients",
    "Recipients per message inserted into the active queue.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
REMOVED = Counter("postfix_qmgr_messages_removed", "Messages removed from the queue.")


class QueueShapeCollector(Collector):
    """The last queue shape qmgr read, as postfix_exporter's showq histograms."""

    def __init__(self) -> None:
        self.shapes: Sequence[QueueShape] = ()

    def collect(self) -> Iterator[HistogramMetricFamily]:
        size = HistogramMetricFamily(
            "postfix_showq_message_size_bytes",
            "Size of messages in the queue, in bytes, by queue.", labels=["queue"])
        age = HistogramMetricFamily(
            "postfix_showq_message_age_seconds",
            "Age of messages in the queue, in seconds, by queue.", labels=["queue"])
        for shape in self.shapes:
            size.add_metric([shape.state], _buckets(SIZE_BOUNDS, shape.size_le, shape.count),
                            shape.size_sum)
            age.add_metric([shape.state], _buckets(AGE_BOUNDS, shape.age_le, shape.count),
                           shape.age_sum)
        yield size
        yield age


def _buckets(bounds: Sequence[float], counts: Sequence[int], total: int) -> list[
        tuple[str, float]]:
    return [*((f"{b:g}", float(c)) for b, c in zip(bounds, counts, strict=True)),
            ("+Inf", float(total))]


QUEUE_SHAPE = QueueShapeCollector()
REGISTRY.register(QUEUE_SHAPE)
