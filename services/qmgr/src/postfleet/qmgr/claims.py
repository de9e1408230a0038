"""Claiming due recipients from the shared queue store.

A claim sets a lease (owner + expiry) on up to N due recipients in one
statement. On PostgreSQL the candidate rows are locked with
``FOR UPDATE SKIP LOCKED``, so two qmgr replicas never take the same
recipient; SQLite has one writer at a time, which gives the same guarantee.
A lease that expires (its qmgr died) makes the work claimable again.

Postfix parameters: none directly; this replaces qmgr's scan of the
incoming and deferred queue directories.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message, MessageState, Recipient, RecipientStatus

DUE = (RecipientStatus.PENDING, RecipientStatus.DEFERRED)


@dataclass(frozen=True)
class Claimed:
    id: int
    queue_id: str
    address: str
    orcpt: str
    attempt: int


async def claim_due(
    engine: AsyncEngine, owner: str, now: datetime, lease: float, limit: int
) -> list[Claimed]:
    """Lease up to ``limit`` due recipients to ``owner``; returns them by age."""
    if limit <= 0:
        return []
    candidates = (
        select(Recipient.id)
        .join(Message, Message.queue_id == Recipient.queue_id)
        .where(
            Recipient.status.in_(DUE),
            Recipient.next_attempt_at <= now,
            or_(Recipient.lease_expires_at.is_(None), Recipient.lease_expires_at < now),
            Message.state != MessageState.HOLD,
        )
        .order_by(Recipient.next_attempt_at, Recipient.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Recipient)
    )
    stmt = (
        update(Recipient)
        .where(Recipient.id.in_(candidates.scalar_subquery()))
        .values(
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease),
            attempts=Recipient.attempts + 1,
        )
        .returning(
            Recipient.id, Recipient.queue_id, Recipient.address, Recipient.orcpt,
            Recipient.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    async with engine.begin() as conn:
        rows = (await conn.execute(stmt)).all()
        if rows:
            await conn.execute(
                update(Message)
                .where(Message.queue_id.in_({r.queue_id for r in rows}))
                .where(Message.state != MessageState.HOLD)
                .values(state=MessageState.ACTIVE)
            )
    claimed = [Claimed(r.id, r.queue_id, r.address, r.orcpt, r.attempts) for r in rows]
    claimed.sort(key=lambda c: (c.queue_id, c.id))
    return claimed


async def message_senders(engine: AsyncEngine, queue_ids: set[str]) -> dict[str, tuple[str, str,
                                                                                       datetime]]:
    """sender, trace id and arrival per queue id (for building jobs)."""
    if not queue_ids:
        return {}
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Message.queue_id, Message.sender, Message.trace_id, Message.arrived_at)
            .where(Message.queue_id.in_(queue_ids))
        )
        return {r.queue_id: (r.sender, r.trace_id, r.arrived_at) for r in rows}


async def release(engine: AsyncEngine, owner: str, ids: list[int]) -> None:
    """Give back leases on claimed-but-undispatched recipients (drain), so
    another replica takes them now rather than when the lease expires."""
    if not ids:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(Recipient)
            .where(Recipient.id.in_(ids), Recipient.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None, attempts=Recipient.attempts - 1)
            .execution_options(synchronize_session=False)
        )
