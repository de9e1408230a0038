"""The results consumer: every qmgr replica pulls from one durable consumer
on the results stream and applies batches to the queue store, then acks.

A batch that fails to apply is not acked; JetStream redelivers it and the
idempotent apply makes the repeat harmless (invariant 3). A result for a job
another replica dispatched frees that replica's destination slot through a
core-NATS note on ``postfleet.qmgr.done.<owner>``.

Postfix parameters: see results.py.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError
from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import ensure_consumer
from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.results import BackoffPolicy, apply_results
from postfleet.qmgr.scheduler import Scheduler, job_owner
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger(__name__)

RESULTS = Counter("postfleet_qmgr_recipients_total", "Recipient outcomes applied", ["status"])
RESULT_ACK_WAIT_S = 30.0


def done_subject(owner: str) -> str:
    return f"{subjects.PREFIX}.qmgr.done.{owner}"


async def consume_results(
    nc: Client, js: JetStreamContext, engine: AsyncEngine, scheduler: Scheduler,
    settings: QmgrSettings, stopping: asyncio.Event,
) -> None:
    await ensure_consumer(js, subjects.RESULTS_STREAM, subjects.RESULTS_CONSUMER,
                          subjects.RESULTS_SUBJECT, RESULT_ACK_WAIT_S)
    psub = await js.pull_subscribe(subjects.RESULTS_SUBJECT, durable=subjects.RESULTS_CONSUMER,
                                   stream=subjects.RESULTS_STREAM)
    policy = BackoffPolicy(settings.minimal_backoff_time, settings.maximal_backoff_time)
    while not stopping.is_set():
        try:
            msgs = await psub.fetch(settings.qmgr_result_batch, timeout=1)
        except (FetchTimeoutError, TimeoutError):
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
            applied = await apply_results(engine, results, policy, settings.myhostname)
        except Exception:
            log.exception("applying %d results failed; they will be redelivered", len(results))
            await asyncio.sleep(1)
            continue
        for m in msgs:
            try:
                await m.ack()
            except Exception as exc:
                log.warning("ack failed (%s); the repeat will be harmless", exc)
        for qid, notice in applied.notices:
            maillog("bounce", qid, f"sender non-delivery notification: {notice}")
        for qid, line in applied.log_lines:
            maillog("qmgr", qid, line)
        RESULTS.labels("delivered").inc(applied.delivered)
        RESULTS.labels("deferred").inc(applied.deferred)
        RESULTS.labels("bounced").inc(applied.bounced)
        RESULTS.labels("expired").inc(applied.expired)
        await _free_slots(nc, scheduler, results)
        scheduler.wake()


async def _free_slots(nc: Client, scheduler: Scheduler, results: list[delivery_pb2.Result]) -> None:
    for res in results:
        if scheduler.done(res.job_id):
            continue
        owner = job_owner(res.job_id)
        if owner and owner != scheduler.s.qmgr_owner:
            try:
                await nc.publish(done_subject(owner), res.job_id.encode())
            except Exception:
                pass  # the owner's inflight timeout frees the slot instead
