"""Applying delivery results to the queue store, in batches.

Each result carries per-recipient outcomes. One transaction applies a whole
batch: delivered recipients are finished, bounced ones finished with a
non-delivery notice queued in the same transaction, deferred ones get their
next attempt (Postfix's backoff) or, past their message's expiry
(maximal_queue_lifetime, or bounce_queue_lifetime for a bounce), expire
with a notice. Messages whose recipients are all finished leave the queue.

The statements, and what makes a repeated result harmless (invariant 3),
are the queue store's (``postfleet.core.db.queue``); this module decides
what each outcome means.

Postfix parameters: minimal_backoff_time, maximal_backoff_time, myhostname
(in notices); maximal_queue_lifetime and bounce_queue_lifetime through each
message's expiry, set by cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postfleet.core.db import queue
from postfleet.core.db.queue import MessageFacts, Settled
from postfleet.core.db.status import Outcome, RecipientStatus
from postfleet.core.maillog import delivery_line
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.backoff import next_attempt
from postfleet.qmgr.bounce import BounceItem, queue_bounces


@dataclass
class Applied:
    """What a batch did, for logs and metrics."""

    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    # Mail log lines qmgr owns (delivery logs each attempt itself):
    # expiries and removals, as (queue id, text).
    log_lines: list[tuple[str, str]] = field(default_factory=list)
    # (original queue id, notice queue id) per non-delivery notice queued.
    notices: list[tuple[str, str]] = field(default_factory=list)
    held: int = 0


@dataclass(frozen=True)
class ResultPolicy:
    """Postfix's minimal_backoff_time, maximal_backoff_time and
    bounce_queue_lifetime (the lifetime of the notices queued here)."""

    minimal_backoff: float
    maximal_backoff: float
    bounce_queue_lifetime: float


@dataclass
class _Batch:
    delivered: list[Settled] = field(default_factory=list)
    deferred: list[tuple[Settled, datetime]] = field(default_factory=list)
    failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, RecipientStatus]] = (
        field(default_factory=list))
    logs: list[dict[str, object]] = field(default_factory=list)


async def apply_results(
    engine: AsyncEngine, results: list[delivery_pb2.Result], policy: ResultPolicy,
    myhostname: str,
) -> Applied:
    now = datetime.now(UTC)
    applied = Applied()
    qids = {r.queue_id for r in results}
    async with engine.begin() as conn:
        messages = await queue.message_facts(conn, qids)
        for res in results:
            if res.hold_reason and res.queue_id in messages:
                await queue.hold_message(conn, res.queue_id)
                applied.held += 1
                applied.log_lines.append(
                    (res.queue_id, f"hold: {res.hold_reason}"))
        batch = _sort(results, messages, policy, now)
        await queue.mark_delivered(conn, batch.delivered)
        await queue.mark_deferred(conn, batch.deferred)
        applied.delivered, applied.deferred = len(batch.delivered), len(batch.deferred)
        bounce_items = await _fail(conn, batch.failed, messages, applied)
        if bounce_items:
            applied.notices = await queue_bounces(
                conn, bounce_items, myhostname, now, policy.bounce_queue_lifetime)
        await queue.log_attempts(conn, batch.logs)
        await queue.mark_messages_deferred(
            conn, {str(r["queue_id"]) for r in batch.logs
                   if r["status"] == RecipientStatus.DEFERRED})
        removed = await queue.remove_finished(conn, qids)
        await queue.free_slots(conn, [r.job_id for r in results if r.job_id])
    applied.log_lines += [(str(r["queue_id"]), _expired_line(r)) for r in batch.logs
                          if r["status"] == RecipientStatus.EXPIRED]
    applied.log_lines += [(qid, "removed") for qid in sorted(removed)]
    return applied


def _sort(
    results: list[delivery_pb2.Result], messages: dict[str, MessageFacts],
    policy: ResultPolicy, now: datetime,
) -> _Batch:
    """Each recipient result to the statement that applies it."""
    batch = _Batch()
    for res in results:
        msg = messages.get(res.queue_id)
        if msg is None:
            continue  # already finished: a repeated result
        for rr in res.recipients:
            status = Outcome.from_proto(rr.outcome).recipient_status
            if status is RecipientStatus.DEFERRED and now >= msg.expires_at:
                status = RecipientStatus.EXPIRED
            row = Settled(rr.id, res.attempt, res.transport, res.nexthop, rr.dsn, rr.reply)
            if status is RecipientStatus.DELIVERED:
                batch.delivered.append(row)
            elif status is RecipientStatus.DEFERRED:
                when = next_attempt(now, msg.arrived_at, policy.minimal_backoff,
                                    policy.maximal_backoff)
                batch.deferred.append((row, when))
            else:
                batch.failed.append((res, rr, status))
            batch.logs.append(_log_row(res, rr, status, msg.arrived_at, now))
    return batch


async def _fail(
    conn: AsyncConnection,
    failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, RecipientStatus]],
    messages: dict[str, MessageFacts], applied: Applied,
) -> list[BounceItem]:
    """Bounce or expire, one row at a time: only a real transition (not a
    repeated result) may queue a notice."""
    items: list[BounceItem] = []
    for res, rr, status in failed:
        row = Settled(rr.id, res.attempt, res.transport, res.nexthop, rr.dsn, rr.reply)
        changed = await queue.mark_failed(conn, row, status)
        if changed is None:
            continue
        expired = status is RecipientStatus.EXPIRED
        if expired:
            applied.expired += 1
        else:
            applied.bounced += 1
        msg = messages[res.queue_id]
        if msg.sender and "NEVER" not in changed.notify.upper():
            items.append(BounceItem(
                queue_id=res.queue_id, sender=msg.sender, recipient=rr.address,
                orig_rcpt=changed.orig_rcpt, dsn=rr.dsn, reply=rr.reply,
                diagnostic=rr.diagnostic, relay=res.relay, expired=expired,
                arrived_at=msg.arrived_at,
            ))
    return items


def _log_row(
    res: delivery_pb2.Result, rr: delivery_pb2.RecipientResult, status: RecipientStatus,
    arrived_at: datetime, now: datetime,
) -> dict[str, object]:
    # The delivery log keeps the mail log's word: sent, not delivered.
    word = Outcome.SENT if status is RecipientStatus.DELIVERED else status
    return {
        "queue_id": res.queue_id, "recipient_id": rr.id, "address": rr.address,
        "attempt": res.attempt, "transport": res.transport, "relay": res.relay or "none",
        "delay": max(0.0, (now - arrived_at).total_seconds()), "dsn": rr.dsn,
        "status": str(word), "reply": rr.reply, "logged_at": now,
    }


def _expired_line(row: dict[str, object]) -> str:
    delay = row["delay"]
    assert isinstance(delay, float)
    return delivery_line(
        address=str(row["address"]), relay=str(row["relay"]), delay=delay,
        dsn=str(row["dsn"]), status=str(row["status"]), reply=str(row["reply"]),
    ) + ", returned to sender"
