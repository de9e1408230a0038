"""The results consumer: every qmgr replica pulls from one durable consumer
on the results stream and applies batches to the queue store, then acks.

A batch that fails to apply is not acked; JetStream redelivers it and the
idempotent apply makes the repeat harmless (invariant 3). Applying a result
frees its job's destination slot (in the same transaction); a core-NATS note
on ``subjects.SLOTS_FREED`` then wakes every replica, since any of them may
have jobs waiting for that destination. ``caught_up`` is set once a fetch
comes back empty: a restarted qmgr waits for it before taking its old work
back, so results of jobs still in flight win over a second attempt.

Postfix parameters: see results.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import ensure_consumer
from postfleet.core.db.status import RecipientStatus
from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr import metrics
from postfleet.qmgr.bounce import NoticePolicy
from postfleet.qmgr.results import ResultPolicy, apply_results
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger(__name__)

RESULTS = Counter("postfleet_qmgr_recipients_total", "Recipient outcomes applied", ["status"])
# A batch fetched by a qmgr that died comes back this long after (applying a
# batch takes milliseconds); a restarted qmgr waits for such results before
# taking its old work back (qmgr_takeback_wait covers it).
RESULT_ACK_WAIT_S = 10.0


def result_policy(settings: QmgrSettings, myorigin: str) -> ResultPolicy:
    """The backoff, lifetimes and notice parameters results are applied with
    (myorigin from the routing snapshot in force)."""
    return ResultPolicy(
        settings.minimal_backoff_time, settings.maximal_backoff_time,
        settings.bounce_queue_lifetime,
        NoticePolicy(
            notify_classes=frozenset(settings.notify_classes),
            bounce_notice_recipient=settings.bounce_notice_recipient,
            two_bounce_notice_recipient=settings.two_bounce_notice_recipient,
            delay_notice_recipient=settings.delay_notice_recipient,
            double_bounce_sender=settings.double_bounce_sender,
            bounce_size_limit=settings.bounce_size_limit,
            delay_warning_time=settings.delay_warning_time, myorigin=myorigin))


async def consume_results(
    nc: Client, js: JetStreamContext, engine: AsyncEngine, scheduler: Scheduler,
    settings: QmgrSettings, stopping: asyncio.Event, caught_up: asyncio.Event | None = None,
) -> None:
    await ensure_consumer(js, subjects.RESULTS_STREAM, subjects.RESULTS_CONSUMER,
                          subjects.RESULTS_SUBJECT, RESULT_ACK_WAIT_S)
    psub = await js.pull_subscribe(subjects.RESULTS_SUBJECT, durable=subjects.RESULTS_CONSUMER,
                                   stream=subjects.RESULTS_STREAM)
    while not stopping.is_set():
        policy = result_policy(settings, scheduler.routing.snapshot.origin)
        try:
            msgs = await psub.fetch(settings.qmgr_result_batch, timeout=1)
        except (FetchTimeoutError, TimeoutError):
            if caught_up is not None:
                caught_up.set()
            continue
        except Exception as exc:  # NATS restarting: wait for the reconnect
            log.warning("results fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            continue
        results = []
        for m in msgs:
            try:
                results.append(delivery_pb2.Result.FromString(m.data))
            except Exception:
                log.error("dropping an unreadable result message")
        try:
            async with scheduler.booking:
                applied = await apply_results(engine, results, policy, settings.myhostname,
                                              refill=scheduler.refill)
                await scheduler.publish_granted(applied.granted)
        except Exception:
            log.exception("applying %d results failed; they will be redelivered", len(results))
            await asyncio.sleep(1)
            continue
        for m in msgs:
            try:
                await m.ack()
            except Exception as exc:
                log.warning("ack failed (%s); the repeat will be harmless", exc)
        for qid, line in applied.bounce_lines:
            maillog("bounce", qid, line)
        for qid, line in applied.log_lines:
            maillog("qmgr", qid, line)
            if line == "removed":
                metrics.REMOVED.inc()
        RESULTS.labels(RecipientStatus.DELIVERED).inc(applied.delivered)
        RESULTS.labels(RecipientStatus.DEFERRED).inc(applied.deferred)
        RESULTS.labels(RecipientStatus.BOUNCED).inc(applied.bounced)
        RESULTS.labels(RecipientStatus.EXPIRED).inc(applied.expired)
        job_ids = [r.job_id for r in results if r.job_id]
        scheduler.finished(job_ids)
        # Freed slots were refilled above; a scan is due for a notice to
        # send, or for mail the last scan left unclaimed for want of room.
        if applied.notices or scheduler.room_limited:
            scheduler.wake()
        with contextlib.suppress(Exception):  # lost: the others look again within 1 s
            await nc.publish(subjects.SLOTS_FREED, "\n".join(job_ids).encode(),
                             headers={subjects.SENDER: settings.qmgr_owner})
