"""Applying delivery results to the queue store, in batches.

Each result carries per-recipient outcomes. One transaction applies a whole
batch: delivered recipients are finished, bounced ones finished with a
non-delivery notice queued in the same transaction, deferred ones get their
next attempt (Postfix's backoff) or, past maximal_queue_lifetime, expire
with a notice. Messages whose recipients are all finished leave the queue.

Idempotent (invariant 3): a repeated result changes nothing — a finished
recipient is never touched again, and a deferral only applies to the
attempt that produced it.

Postfix parameters: minimal_backoff_time, maximal_backoff_time,
maximal_queue_lifetime / bounce_queue_lifetime (via messages.expires_at).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from postfleet.core.db.models import (
    DeliveryLog,
    Message,
    MessageState,
    Recipient,
    RecipientStatus,
)
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.backoff import next_attempt
from postfleet.qmgr.bounce import BounceItem, build_bounces


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


@dataclass(frozen=True)
class BackoffPolicy:
    minimal: float
    maximal: float


async def apply_results(
    engine: AsyncEngine, results: list[delivery_pb2.Result], policy: BackoffPolicy,
    myhostname: str,
) -> Applied:
    now = datetime.now(UTC)
    applied = Applied()
    async with engine.begin() as conn:
        qids = {r.queue_id for r in results}
        messages = await _messages(conn, qids)
        done_rows: list[dict[str, object]] = []
        defer_rows: list[dict[str, object]] = []
        failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, str]] = []
        logs: list[dict[str, object]] = []
        for res in results:
            msg = messages.get(res.queue_id)
            if msg is None:
                continue  # already finished: a repeated result
            for rr in res.recipients:
                status = rr.status
                if status == "deferred" and now >= msg.expires_at:
                    status = "expired"
                row = {"b_id": rr.id, "b_transport": res.transport, "b_dsn": rr.dsn,
                       "b_reply": rr.reply, "b_attempt": res.attempt}
                if status == "sent":
                    done_rows.append({**row, "b_status": RecipientStatus.DELIVERED})
                elif status == "deferred":
                    defer_rows.append({**row, "b_next": next_attempt(
                        now, msg.arrived_at, policy.minimal, policy.maximal)})
                else:
                    failed.append((res, rr, status))
                logs.append(_log_row(res, rr, status, msg.arrived_at, now))
        if done_rows:
            await conn.execute(_finish_stmt(), done_rows)
            applied.delivered = len(done_rows)
        if defer_rows:
            await conn.execute(_defer_stmt(), defer_rows)
            applied.deferred = len(defer_rows)
        bounce_items = await _fail(conn, failed, messages, applied)
        if bounce_items:
            applied.notices = await build_bounces(conn, bounce_items, myhostname, now)
        if logs:
            await conn.execute(insert(DeliveryLog), logs)
        await _mark_deferred(conn, {r["queue_id"] for r in logs if r["status"] == "deferred"})
        removed = await _remove_finished(conn, qids)
    applied.log_lines = [(str(r["queue_id"]), _line(r) + ", returned to sender")
                         for r in logs if r["status"] == "expired"]
    applied.log_lines += [(qid, "removed") for qid in sorted(removed)]
    return applied


async def _messages(conn: AsyncConnection, qids: set[str]) -> dict[str, Any]:
    if not qids:
        return {}
    rows = await conn.execute(
        select(Message.queue_id, Message.sender, Message.arrived_at, Message.expires_at,
               Message.envid, Message.ret).where(Message.queue_id.in_(qids))
    )
    return {r.queue_id: r for r in rows}


def _not_final() -> ColumnElement[bool]:
    # Plain comparisons, not IN (...): an expanding IN cannot be executemany'd.
    return or_(Recipient.status == RecipientStatus.PENDING,
               Recipient.status == RecipientStatus.DEFERRED)


def _finish_stmt() -> Update:
    return (
        update(Recipient)
        .where(and_(Recipient.id == bindparam("b_id"), _not_final()))
        .values(status=bindparam("b_status"), transport=bindparam("b_transport"),
                dsn_status=bindparam("b_dsn"), last_reply=bindparam("b_reply"),
                lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def _defer_stmt() -> Update:
    return (
        update(Recipient)
        .where(and_(Recipient.id == bindparam("b_id"), _not_final(),
                    Recipient.attempts == bindparam("b_attempt")))
        .values(status=RecipientStatus.DEFERRED, transport=bindparam("b_transport"),
                dsn_status=bindparam("b_dsn"), last_reply=bindparam("b_reply"),
                next_attempt_at=bindparam("b_next"), lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


async def _fail(
    conn: AsyncConnection,
    failed: list[tuple[delivery_pb2.Result, delivery_pb2.RecipientResult, str]],
    messages: dict[str, Any], applied: Applied,
) -> list[BounceItem]:
    """Bounce or expire, one row at a time: only a real transition (not a
    repeated result) may queue a notice."""
    items: list[BounceItem] = []
    for res, rr, status in failed:
        final = RecipientStatus.EXPIRED if status == "expired" else RecipientStatus.BOUNCED
        changed = await conn.execute(
            update(Recipient)
            .where(Recipient.id == rr.id, _not_final())
            .values(status=final, transport=res.transport, dsn_status=rr.dsn,
                    last_reply=rr.reply, lease_owner=None, lease_expires_at=None)
            .returning(Recipient.orig_rcpt, Recipient.orcpt, Recipient.notify)
            .execution_options(synchronize_session=False)
        )
        row = changed.first()
        if row is None:
            continue
        if final is RecipientStatus.EXPIRED:
            applied.expired += 1
        else:
            applied.bounced += 1
        msg = messages[res.queue_id]
        if msg.sender and "NEVER" not in row.notify.upper():
            items.append(BounceItem(
                queue_id=res.queue_id, sender=msg.sender, recipient=rr.address,
                orig_rcpt=row.orig_rcpt, dsn=rr.dsn, reply=rr.reply,
                diagnostic=rr.diagnostic, relay=res.relay,
                expired=final is RecipientStatus.EXPIRED, arrived_at=msg.arrived_at,
            ))
    return items


async def _mark_deferred(conn: AsyncConnection, qids: set[object]) -> None:
    if qids:
        await conn.execute(
            update(Message).where(Message.queue_id.in_(qids),
                                  Message.state == MessageState.ACTIVE)
            .values(state=MessageState.DEFERRED)
        )


async def _remove_finished(conn: AsyncConnection, qids: set[str]) -> set[str]:
    """Delete messages none of whose recipients is still to be delivered."""
    if not qids:
        return set()
    open_rcpt = exists().where(Recipient.queue_id == Message.queue_id, _not_final())
    removed = await conn.execute(
        delete(Message).where(Message.queue_id.in_(qids), ~open_rcpt)
        .returning(Message.queue_id)
        .execution_options(synchronize_session=False)
    )
    return set(removed.scalars())


def _log_row(
    res: delivery_pb2.Result, rr: delivery_pb2.RecipientResult, status: str,
    arrived_at: datetime, now: datetime,
) -> dict[str, object]:
    return {
        "queue_id": res.queue_id, "recipient_id": rr.id, "address": rr.address,
        "attempt": res.attempt, "transport": res.transport, "relay": res.relay or "none",
        "delay": max(0.0, (now - arrived_at).total_seconds()), "dsn": rr.dsn,
        "status": status, "reply": rr.reply, "logged_at": now,
    }


def _line(row: dict[str, object]) -> str:
    delay = row["delay"]
    assert isinstance(delay, float)
    return (f"to=<{row['address']}>, relay={row['relay']}, delay={delay:.2g}, "
            f"dsn={row['dsn']}, status={row['status']} ({row['reply']})")
