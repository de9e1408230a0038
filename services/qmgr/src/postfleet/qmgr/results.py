"""Applying delivery results to the queue store, in batches.

Each result carries per-recipient outcomes. One transaction applies a whole
batch: delivered recipients are finished (with a success notice for
NOTIFY=SUCCESS unless the next hop took the DSN request on), bounced ones
finished with a non-delivery notice queued in the same transaction, deferred
ones get their next attempt (Postfix's backoff) or, past their message's
expiry (maximal_queue_lifetime, or bounce_queue_lifetime for a bounce),
expire with a notice. A message deferred past delay_warning_time gets its
delay notice once: at the first deferral logged after that time (the
delivery log says whether one was). Who gets which notice is bounce.py's.
Messages whose recipients are all finished leave the queue.

The statements, and what makes a repeated result harmless (invariant 3),
are the queue store's (``postfleet.core.db.queue``); this module decides
what each outcome means.

Postfix parameters: minimal_backoff_time, maximal_backoff_time, myhostname
(in notices), delay_warning_time and the notices' own (bounce.py);
maximal_queue_lifetime and bounce_queue_lifetime through each message's
expiry, set by cleanup.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postfleet.core.db import queue
from postfleet.core.db.queue import Failed, MessageFacts, Settled
from postfleet.core.db.status import Outcome, RecipientStatus
from postfleet.core.maillog import delivery_line
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.backoff import next_attempt
from postfleet.qmgr.bounce import Kind, Notice, NoticeItem, NoticePolicy, plan, queue_notices


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
    # (original queue id, notice queue id) per notice queued.
    notices: list[tuple[str, str]] = field(default_factory=list)
    # The bounce daemon's lines: "sender non-delivery notification: ID", ...
    bounce_lines: list[tuple[str, str]] = field(default_factory=list)
    held: int = 0
    # Waiting jobs booked into the slots this batch freed (by destination),
    # to publish once the transaction committed.
    granted: dict[str, list[str]] = field(default_factory=dict)


# Books waiting jobs into freed slots, inside the results transaction.
Refill = Callable[[AsyncConnection], Awaitable[dict[str, list[str]]]]


@dataclass(frozen=True)
class ResultPolicy:
    """Postfix's minimal_backoff_time, maximal_backoff_time and
    bounce_queue_lifetime (the lifetime of the notices queued here), and
    what the notices follow (notify_classes, delay_warning_time, ...)."""

    minimal_backoff: float
    maximal_backoff: float
    bounce_queue_lifetime: float
    notices: NoticePolicy = field(default_factory=NoticePolicy)


@dataclass
class _Batch:
    delivered: list[Settled] = field(default_factory=list)
    deferred: list[tuple[Settled, datetime]] = field(default_factory=list)
    failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, RecipientStatus]] = (
        field(default_factory=list))
    # The results and recipients of ``deferred``, for delay notices.
    deferred_results: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult]] = (
        field(default_factory=list))
    logs: list[dict[str, object]] = field(default_factory=list)


async def apply_results(
    engine: AsyncEngine, results: list[delivery_pb2.Result], policy: ResultPolicy,
    myhostname: str, refill: Refill | None = None,
) -> Applied:
    """Apply a batch in one transaction; ``refill`` then books waiting jobs
    into the slots it freed, in the same transaction (no second commit, and
    no wait for the next queue scan, before a freed slot is used again)."""
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
        notices = await _success_notices(conn, results, messages, policy, myhostname, applied)
        notices += await _delay_notices(conn, batch, messages, policy, myhostname, now,
                                        applied)
        await queue.mark_delivered(conn, batch.delivered)
        await queue.mark_deferred(conn, batch.deferred)
        applied.delivered, applied.deferred = len(batch.delivered), len(batch.deferred)
        failed = await _fail(conn, batch.failed, messages, applied)
        notices += _planned(Kind.FAILURE, failed, messages, policy, myhostname, applied)
        await queue_notices(conn, notices, messages, myhostname, now,
                            _lifetime(policy))
        applied.notices = [(n.queue_id, n.new_id) for n in notices]
        applied.bounce_lines += [(n.queue_id, n.log_line) for n in notices]
        await queue.log_attempts(conn, batch.logs)
        await queue.mark_messages_deferred(
            conn, {str(r["queue_id"]) for r in batch.logs
                   if r["status"] == RecipientStatus.DEFERRED})
        removed = await queue.remove_finished(conn, qids)
        await queue.free_slots(conn, [r.job_id for r in results if r.job_id])
        if refill is not None:
            applied.granted = await refill(conn)
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
                batch.deferred_results.append((res, rr))
            else:
                batch.failed.append((res, rr, status))
            batch.logs.append(_log_row(res, rr, status, msg.arrived_at, now))
    return batch


def _lifetime(policy: ResultPolicy) -> NoticePolicy:
    """The notice policy with the notices' own queue lifetime."""
    return dataclasses.replace(policy.notices,
                               bounce_queue_lifetime=policy.bounce_queue_lifetime)


def _item(rr: delivery_pb2.RecipientResult, res: delivery_pb2.Result, facts: Failed, *,
          expired: bool = False, action: str = "") -> NoticeItem:
    return NoticeItem(
        recipient=rr.address, orig_rcpt=facts.orig_rcpt, orcpt=facts.orcpt,
        notify=facts.notify, dsn=rr.dsn, reply=rr.reply, diagnostic=rr.diagnostic,
        relay=res.relay, expired=expired, action=action)


def _planned(
    kind: Kind, items: dict[str, list[NoticeItem]], messages: dict[str, MessageFacts],
    policy: ResultPolicy, myhostname: str, applied: Applied,
) -> list[Notice]:
    """The notices for each message's items, and the lines of those not sent."""
    notices: list[Notice] = []
    for qid, group in items.items():
        planned, why = plan(kind, messages[qid], group, _lifetime(policy), myhostname)
        notices += planned
        if why:
            applied.bounce_lines.append((qid, why))
    return notices


async def _success_notices(
    conn: AsyncConnection, results: list[delivery_pb2.Result],
    messages: dict[str, MessageFacts], policy: ResultPolicy, myhostname: str,
    applied: Applied,
) -> list[Notice]:
    """NOTIFY=SUCCESS recipients delivered by this batch (not before) and
    not by a next hop that took the request on: "delivered" after final
    delivery, "relayed" otherwise (Postfix's smtp_rcpt_done)."""
    sent = [(res, rr) for res in results if res.queue_id in messages for rr in res.recipients
            if Outcome.from_proto(rr.outcome) is Outcome.SENT and not rr.dsn_passed_on]
    if not sent:
        return []
    facts = await queue.open_dsn_facts(conn, [rr.id for _res, rr in sent])
    items: dict[str, list[NoticeItem]] = {}
    for res, rr in sent:
        found = facts.get(rr.id)
        if found is not None and "SUCCESS" in found.notify.upper().split(","):
            action = "delivered" if res.final_delivery else "relayed"
            items.setdefault(res.queue_id, []).append(_item(rr, res, found, action=action))
    return _planned(Kind.SUCCESS, items, messages, policy, myhostname, applied)


async def _delay_notices(
    conn: AsyncConnection, batch: _Batch, messages: dict[str, MessageFacts],
    policy: ResultPolicy, myhostname: str, now: datetime, applied: Applied,
) -> list[Notice]:
    """A delay notice for each message deferred past delay_warning_time that
    has had none: no deferral of it was logged at or after that time."""
    warn_after = policy.notices.delay_warning_time
    if warn_after <= 0 or not batch.deferred_results:
        return []
    due = {res.queue_id for res, _rr in batch.deferred_results
           if now >= messages[res.queue_id].arrived_at + timedelta(seconds=warn_after)}
    if not due:
        return []
    last = await queue.last_deferrals(conn, due)
    warned = {qid for qid, when in last.items()
              if when >= messages[qid].arrived_at + timedelta(seconds=warn_after)}
    pending = [(res, rr) for res, rr in batch.deferred_results
               if res.queue_id in due - warned]
    facts = await queue.open_dsn_facts(conn, [rr.id for _res, rr in pending])
    items: dict[str, list[NoticeItem]] = {}
    for res, rr in pending:
        if (found := facts.get(rr.id)) is not None:
            items.setdefault(res.queue_id, []).append(_item(rr, res, found))
    return _planned(Kind.DELAY, items, messages, policy, myhostname, applied)


async def _fail(
    conn: AsyncConnection,
    failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, RecipientStatus]],
    messages: dict[str, MessageFacts], applied: Applied,
) -> dict[str, list[NoticeItem]]:
    """Bounce or expire, one row at a time: only a real transition (not a
    repeated result) may queue a notice. Returns each message's items."""
    items: dict[str, list[NoticeItem]] = {}
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
        items.setdefault(res.queue_id, []).append(_item(rr, res, changed, expired=expired))
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
