"""The queue store's operations: the one place that writes and reads queue state.

Every role goes through here: cleanup and qmgr's bounce writer ``enqueue``
(Postfix's cleanup writing a queue file; a bounce notice is queued in the
transaction that bounces its recipients, so a crash can never lose one),
qmgr claims due recipients under a lease and applies delivery results,
delivery reads a message's content, and the admin API's
list/show/flush/hold/release/requeue/delete are the queue tools'
statements. What "still to be delivered" means is ``open_recipient()``,
spelled once.

Claims (``claim_due``) set a lease (owner + expiry) on up to N due
recipients in one statement. On PostgreSQL the candidate rows are locked
with ``FOR UPDATE SKIP LOCKED``, so two qmgr replicas never take the same
recipient; SQLite has one writer at a time, which gives the same guarantee.
A lease that expires (its owner died) makes the work claimable again.

Results are idempotent (DESIGN invariant 3): a finished recipient is never
touched again, and a deferral applies only to the attempt that produced it.

Postfix parameters: none directly; this replaces the queue directories
(incoming, active, deferred, hold) and their files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Float,
    String,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from postfleet.core.db.models import (
    DeliveryLog,
    DestinationPacing,
    DestinationSlot,
    Message,
    Recipient,
)
from postfleet.core.db.status import MessageState, RecipientStatus


def open_recipient() -> ColumnElement[bool]:
    """A recipient still to be delivered (pending or deferred).

    Plain comparisons, not IN (...): an expanding IN cannot be executemany'd."""
    return or_(Recipient.status == RecipientStatus.PENDING,
               Recipient.status == RecipientStatus.DEFERRED)


def _by_dialect(build: Callable[[Callable[[Any, str], ColumnElement[bool]]], Any]
                ) -> dict[str, Any]:
    """A statement whose ``column IN (list)`` is spelled per dialect: on
    PostgreSQL ``column = ANY(:array)``, one statement text whatever the
    list's length -- an expanding IN is a new statement for every length,
    and asyncpg prepares each new one (a round trip, and a plan, more);
    elsewhere the expanding IN."""
    def expanding(column: Any, name: str) -> ColumnElement[bool]:
        return column.in_(bindparam(name, expanding=True))

    def array(column: Any, name: str) -> ColumnElement[bool]:
        return column == any_(bindparam(name, type_=ARRAY(String)))

    return {"postgresql": build(array), "": build(expanding)}


def _for(conn: AsyncConnection, statements: dict[str, Any]) -> Any:
    stmt = statements.get(conn.dialect.name)
    return statements[""] if stmt is None else stmt


# -- enqueue -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    orig_rcpt: str = ""  # the address as received, before rewriting
    orcpt: str = ""  # RFC 3461 ORCPT
    notify: str = ""  # RFC 3461 NOTIFY


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to queue: its envelope, its content (CRLF, not dot-stuffed)
    and where it came from."""

    queue_id: str
    sender: str
    body: bytes
    recipients: Sequence[NewRecipient]
    arrived_at: datetime
    expires_at: datetime
    client_name: str = ""
    client_addr: str = ""
    helo: str = ""
    protocol: str = ""
    sasl_username: str = ""
    trace_id: str = ""
    content_filter: str = ""
    ret: str = ""
    envid: str = ""
    state: MessageState = MessageState.INCOMING

    def message_row(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id, "sender": self.sender, "size": len(self.body),
            "body": self.body, "client_name": self.client_name,
            "client_addr": self.client_addr, "helo": self.helo, "protocol": self.protocol,
            "sasl_username": self.sasl_username, "trace_id": self.trace_id,
            "content_filter": self.content_filter, "ret": self.ret, "envid": self.envid,
            "state": self.state, "arrived_at": self.arrived_at, "expires_at": self.expires_at,
        }

    def recipient_rows(self) -> list[dict[str, Any]]:
        return [
            {"queue_id": self.queue_id, "address": r.address,
             "orig_rcpt": r.orig_rcpt or r.address, "orcpt": r.orcpt, "notify": r.notify,
             "status": RecipientStatus.PENDING, "transport": "", "nexthop": "",
             "attempts": 0, "next_attempt_at": self.arrived_at, "dsn_status": "",
             "last_reply": ""}
            for r in self.recipients
        ]


_INSERT_MESSAGE = insert(Message)
_INSERT_RECIPIENT = insert(Recipient)


async def enqueue(conn: AsyncConnection, messages: Sequence[NewMessage]) -> None:
    """Insert messages with all their recipients, in the caller's transaction:
    the message is queued when that transaction commits, and not before."""
    if not messages:
        return
    await conn.execute(_INSERT_MESSAGE, [m.message_row() for m in messages])
    await conn.execute(_INSERT_RECIPIENT, [r for m in messages for r in m.recipient_rows()])


async def discard(conn: AsyncConnection, queue_ids: Sequence[str]) -> None:
    """Take messages out again in the transaction that enqueued them."""
    if queue_ids:
        await conn.execute(delete(Recipient).where(Recipient.queue_id.in_(queue_ids)))
        await conn.execute(delete(Message).where(Message.queue_id.in_(queue_ids)))


# -- content -------------------------------------------------------------------

# Built once; SQLAlchemy caches its compiled form.
_LOAD_BODY = select(Message.body).where(Message.queue_id == bindparam("qid"))


class UnreadableContent(Exception):
    """A message's stored content cannot be read as a message: not a
    database outage (that is retried), but a queue entry that never will
    be deliverable as it is (Postfix's corrupt queue file)."""


async def load_body(conn: AsyncConnection, queue_id: str) -> bytes | None:
    """A message's content, or None when it has left the queue; raises
    UnreadableContent when what is stored is not a message's bytes."""
    row = (await conn.execute(_LOAD_BODY, {"qid": queue_id})).first()
    if row is None:
        return None
    body = row.body
    if not isinstance(body, bytes | bytearray | memoryview):
        raise UnreadableContent(f"stored content is {type(body).__name__}, not bytes")
    return bytes(body)


# No expanding IN: the statement is compiled once and cached; the job's ids
# are matched here (a message has few open recipients at one attempt).
_CURRENT = (select(Recipient.id).where(
    Recipient.queue_id == bindparam("qid"), Recipient.attempts == bindparam("attempt"),
    open_recipient()))


async def current_recipients(
    conn: AsyncConnection, queue_id: str, ids: Sequence[int], attempt: int
) -> set[int]:
    """Which of a job's recipients the job still speaks for: open, and not
    claimed again since (a newer attempt supersedes a job still on the bus
    after its qmgr died). Delivery sends to these only."""
    rows = await conn.execute(_CURRENT, {"qid": queue_id, "attempt": attempt})
    return set(rows.scalars()) & set(ids)


def _job_statement(agg: Any) -> Any:
    current = (select(agg).where(
        Recipient.queue_id == Message.queue_id, Recipient.attempts == bindparam("attempt"),
        open_recipient()).scalar_subquery())
    return select(Message.body, current.label("ids")).where(
        Message.queue_id == bindparam("qid"))


# The body and, aggregated, the ids the job may still speak for: one
# statement per delivery job instead of two round trips.
_LOAD_JOB = {
    "sqlite": _job_statement(func.group_concat(Recipient.id)),
    "postgresql": _job_statement(func.string_agg(cast(Recipient.id, String), ",")),
}


async def load_job(
    conn: AsyncConnection, queue_id: str, ids: Sequence[int], attempt: int
) -> tuple[bytes | None, set[int]]:
    """A job's content and the recipients it still speaks for (as
    ``current_recipients``), in one statement; (None, empty) when the
    message is gone or the job speaks for no one."""
    stmt = _LOAD_JOB.get(conn.dialect.name)
    if stmt is None:  # another database: the two statements
        current = await current_recipients(conn, queue_id, ids, attempt)
        return (await load_body(conn, queue_id) if current else None), current
    row = (await conn.execute(stmt, {"qid": queue_id, "attempt": attempt})).first()
    if row is None:
        return None, set()
    current = {int(i) for i in str(row.ids or "").split(",") if i} & set(ids)
    if not current:
        return None, set()
    body = row.body
    if not isinstance(body, bytes | bytearray | memoryview):
        raise UnreadableContent(f"stored content is {type(body).__name__}, not bytes")
    return bytes(body), current


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a queued message came from and its DSN envelope: what a content
    filter hands back to cleanup with the filtered copy."""

    client_name: str
    client_addr: str
    helo: str
    protocol: str
    sasl_username: str
    ret: str
    envid: str


_ORIGIN = select(Message.client_name, Message.client_addr, Message.helo, Message.protocol,
                 Message.sasl_username, Message.ret, Message.envid
                 ).where(Message.queue_id == bindparam("qid"))


async def message_origin(conn: AsyncConnection, queue_id: str) -> Origin | None:
    row = (await conn.execute(_ORIGIN, {"qid": queue_id})).first()
    return None if row is None else Origin(*row)


# -- claims --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased recipient with what a delivery job needs of its message."""

    id: int
    queue_id: str
    address: str
    orig_rcpt: str  # the address as received (orig_to= in the log)
    attempt: int
    sender: str
    trace_id: str
    arrived_at: datetime
    content_filter: str = ""  # the message's content filter (transport:nexthop), if any
    # RFC 3461 (postfleet.core.smtp.dsn's forms) and the message's protocol
    # (UTF8SMTP...: the sender asked for SMTPUTF8).
    orcpt: str = ""
    notify: str = ""
    ret: str = ""
    envid: str = ""
    protocol: str = ""


@dataclass(frozen=True, slots=True)
class Activated:
    """A message a claim moved into the active queue (from incoming or
    deferred): what qmgr's ``from=<…>, size=…, nrcpt=… (queue active)``
    line says of it."""

    queue_id: str
    sender: str
    size: int
    nrcpt: int


class Claims(list[Claimed]):
    """Claimed recipients, with the messages the claim made active."""

    def __init__(self, claimed: Sequence[Claimed] = (),
                 activated: Sequence[Activated] = ()) -> None:
        super().__init__(claimed)
        self.activated = list(activated)


async def claim_due(
    engine: AsyncEngine, owner: str, now: datetime, lease: float, limit: int
) -> Claims:
    """Lease up to ``limit`` due recipients to ``owner``, counting an attempt;
    returns them grouped by message."""
    if limit <= 0:
        return Claims()
    async with engine.begin() as conn:
        return await _claim(conn, owner, now, lease, limit)


async def claim_and_book(
    engine: AsyncEngine, owner: str, now: datetime, lease: float, limit: int,
    plan: Callable[[list[Claimed]], Sequence[SlotRequest]],
) -> tuple[Claims, dict[str, list[str]]]:
    """Claim (as claim_due) and take destination slots (as acquire_slots) in
    one transaction: one commit -- one fsync on SQLite -- per queue scan.
    ``plan`` turns what was claimed into the slot requests of every job now
    waiting; it runs inside the transaction, so if the commit fails, the
    caller must forget the jobs it planned."""
    async with engine.begin() as conn:
        claimed = await _claim(conn, owner, now, lease, limit) if limit > 0 else Claims()
        granted = await book_slots(conn, owner, now, lease, plan(claimed))
    return claimed, granted


# The claim's statements, built once: SQLAlchemy then reuses their cache
# keys and compiled forms (building them per scan was a fifth of qmgr's CPU).
_CLAIM = (
    update(Recipient)
    .where(Recipient.id.in_(
        select(Recipient.id)
        .join(Message, Message.queue_id == Recipient.queue_id)
        .where(
            open_recipient(),
            Recipient.next_attempt_at <= bindparam("now"),
            or_(Recipient.lease_expires_at.is_(None),
                Recipient.lease_expires_at < bindparam("now")),
            Message.state != MessageState.HOLD,
        )
        .order_by(Recipient.next_attempt_at, Recipient.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True, of=Recipient)
        .scalar_subquery()))
    .values(lease_owner=bindparam("owner"), lease_expires_at=bindparam("until"),
            attempts=Recipient.attempts + 1)
    .returning(Recipient.id, Recipient.queue_id, Recipient.address, Recipient.orig_rcpt,
               Recipient.attempts, Recipient.orcpt, Recipient.notify)
    .execution_options(synchronize_session=False)
)
# The envelope, and for qmgr's "from=<…>, size=…, nrcpt=… (queue active)"
# line the messages' size and recipient count, in one statement.
_ENVELOPES = _by_dialect(lambda member: select(
    Message.queue_id, Message.sender, Message.trace_id, Message.arrived_at,
    Message.content_filter, Message.ret, Message.envid, Message.protocol, Message.state,
    Message.size,
    select(func.count()).where(Recipient.queue_id == Message.queue_id, open_recipient())
    .scalar_subquery().label("nrcpt"),
).where(member(Message.queue_id, "qids")))
_ACTIVATE = _by_dialect(lambda member: update(Message).where(member(Message.queue_id, "qids"))
                        .values(state=MessageState.ACTIVE)
                        .execution_options(synchronize_session=False))


async def _claim(
    conn: AsyncConnection, owner: str, now: datetime, lease: float, limit: int
) -> Claims:
    rows = (await conn.execute(_CLAIM, {
        "now": now, "limit": limit, "owner": owner,
        "until": now + timedelta(seconds=lease)})).all()
    if not rows:
        return Claims()
    qids = sorted({r.queue_id for r in rows})
    envelope = {m.queue_id: m for m in await conn.execute(_for(conn, _ENVELOPES), {"qids": qids})}
    # Those coming from incoming or deferred enter the active queue.
    entering = sorted(q for q, m in envelope.items()
                      if m.state in (MessageState.INCOMING, MessageState.DEFERRED))
    if entering:
        await conn.execute(_for(conn, _ACTIVATE), {"qids": entering})
    activated = [Activated(q, envelope[q].sender, envelope[q].size, envelope[q].nrcpt)
                 for q in entering]
    claimed = [
        Claimed(r.id, r.queue_id, r.address, r.orig_rcpt, r.attempts, m.sender, m.trace_id,
                m.arrived_at, m.content_filter, r.orcpt, r.notify, m.ret, m.envid,
                m.protocol)
        for r in rows if (m := envelope.get(r.queue_id)) is not None
    ]
    claimed.sort(key=lambda c: (c.queue_id, c.id))
    return Claims(claimed, activated)


async def release(engine: AsyncEngine, owner: str, ids: Sequence[int]) -> None:
    """Give back leases on claimed-but-undispatched recipients (drain), so
    another replica takes them now rather than when the lease expires; the
    attempt they were claimed for is not counted."""
    if not ids:
        return
    async with engine.begin() as conn:
        await conn.execute(
            update(Recipient)
            .where(Recipient.id.in_(ids), Recipient.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None, attempts=Recipient.attempts - 1)
            .execution_options(synchronize_session=False)
        )


async def renew_leases(
    engine: AsyncEngine, owner: str, now: datetime, lease: float,
    recipient_ids: Sequence[int], job_ids: Sequence[str],
) -> int:
    """Extend ``owner``'s leases on the recipients it still holds (waiting or
    in flight) and on its jobs' destination slots: while their qmgr lives,
    its work is never retaken. Returns how many recipient leases were renewed."""
    until = now + timedelta(seconds=lease)
    renewed = 0
    async with engine.begin() as conn:
        for part in _chunks(list(recipient_ids)):
            renewed += (await conn.execute(
                update(Recipient).where(Recipient.lease_owner == owner, Recipient.id.in_(part))
                .values(lease_expires_at=until).execution_options(synchronize_session=False)
            )).rowcount
        for jobs in _chunks(list(job_ids)):
            await conn.execute(update(DestinationSlot).where(
                DestinationSlot.owner == owner, DestinationSlot.job_id.in_(jobs))
                .values(expires_at=until))
    return renewed


def _chunks(items: list[Any], size: int = 500) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


async def take_back(engine: AsyncEngine, owner: str) -> int:
    """A restarted qmgr with its old identity: what it held before it died
    becomes claimable at once instead of when the old lease runs out. The
    attempt count is kept, so a job of the old attempt still on the bus is
    recognised as stale by delivery (``load_job``). Slots it held go too:
    their jobs' results free nothing any more."""
    async with engine.begin() as conn:
        taken = (await conn.execute(
            update(Recipient).where(Recipient.lease_owner == owner, open_recipient())
            .values(lease_owner=None, lease_expires_at=None)
            .execution_options(synchronize_session=False)
        )).rowcount
        await conn.execute(delete(DestinationSlot).where(DestinationSlot.owner == owner))
    return taken


# -- destination slots (concurrency and pacing, fleet-wide) ----------------------


@dataclass(frozen=True, slots=True)
class SlotRequest:
    """Jobs waiting for one destination and the limits that apply to it."""

    destination: str
    job_ids: Sequence[str]
    limit: int  # destination concurrency limit
    rate_delay: float = 0.0  # seconds between deliveries (0: none)


async def acquire_slots(
    engine: AsyncEngine, owner: str, now: datetime, lease: float,
    requests: Sequence[SlotRequest],
) -> dict[str, list[str]]:
    """Take as many slots as each destination's limit leaves free, fleet-wide;
    returns the job ids that may be dispatched now, by destination.

    One transaction for all destinations, each locked in name order on
    PostgreSQL (an advisory lock per destination) so replicas never
    over-book a destination; SQLite's single writer does the same. A
    destination with a rate delay gets one job at a time, each at least the
    delay after the previous one (Postfix: concurrency 1 with a rate delay).
    """
    if not any(r.job_ids for r in requests):
        return {}
    async with engine.begin() as conn:
        return await book_slots(conn, owner, now, lease, requests)


async def book_slots(
    conn: AsyncConnection, owner: str, now: datetime, lease: float,
    requests: Sequence[SlotRequest],
) -> dict[str, list[str]]:
    """acquire_slots inside the caller's transaction (a claim's, or the one
    that applies results and so frees slots)."""
    granted: dict[str, list[str]] = {}
    until = now + timedelta(seconds=lease)
    for req in sorted(requests, key=lambda r: r.destination):
        if not req.job_ids:
            continue
        await _lock_destination(conn, req.destination)
        free = await _free_slots(conn, req, now)
        if free <= 0:
            continue
        take = list(req.job_ids[:free])
        await conn.execute(_INSERT_SLOT, [
            {"job_id": j, "destination": req.destination, "owner": owner,
             "expires_at": until} for j in take])
        if req.rate_delay > 0:
            await _pace(conn, req.destination, now + timedelta(seconds=req.rate_delay))
        granted[req.destination] = take
    return granted


_INSERT_SLOT = insert(DestinationSlot)
_LOCK_DESTINATION = select(func.pg_advisory_xact_lock(func.hashtext(bindparam("dest"))))
_BUSY_SLOTS = (select(func.count()).select_from(DestinationSlot)
               .where(DestinationSlot.destination == bindparam("dest"),
                      DestinationSlot.expires_at > bindparam("now")))
_FREE_SLOTS = _by_dialect(lambda member: delete(DestinationSlot).where(
    member(DestinationSlot.job_id, "jobs")))


async def _lock_destination(conn: AsyncConnection, destination: str) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(_LOCK_DESTINATION, {"dest": destination})


async def _free_slots(conn: AsyncConnection, req: SlotRequest, now: datetime) -> int:
    busy = (await conn.execute(_BUSY_SLOTS, {"dest": req.destination, "now": now})
            ).scalar_one()
    if req.rate_delay > 0:
        next_at = (await conn.execute(
            select(DestinationPacing.next_at)
            .where(DestinationPacing.destination == req.destination))).scalar_one_or_none()
        if busy or (next_at is not None and next_at > now):
            return 0
        return 1
    return max(0, req.limit - busy)


async def _pace(conn: AsyncConnection, destination: str, next_at: datetime) -> None:
    done = (await conn.execute(update(DestinationPacing)
                               .where(DestinationPacing.destination == destination)
                               .values(next_at=next_at))).rowcount
    if not done:
        await conn.execute(insert(DestinationPacing).values(destination=destination,
                                                            next_at=next_at))


async def next_pacing(engine: AsyncEngine, destinations: Sequence[str]) -> datetime | None:
    """The earliest time one of these rate-limited destinations opens again."""
    if not destinations:
        return None
    async with engine.connect() as conn:
        return (await conn.execute(select(func.min(DestinationPacing.next_at)).where(
            DestinationPacing.destination.in_(destinations)))).scalar_one_or_none()


async def free_slots(conn: AsyncConnection, job_ids: Sequence[str]) -> None:
    """The jobs are over (their results applied, or never published)."""
    if job_ids:
        await conn.execute(_for(conn, _FREE_SLOTS), {"jobs": list(job_ids)})


async def release_slots(engine: AsyncEngine, job_ids: Sequence[str]) -> None:
    async with engine.begin() as conn:
        await free_slots(conn, job_ids)


# -- results -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settled:
    """One recipient's outcome, as a row to apply."""

    id: int
    attempt: int
    transport: str
    nexthop: str
    dsn: str
    reply: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A recipient that bounced or expired by this transition: what its
    notice needs."""

    id: int
    orig_rcpt: str
    orcpt: str
    notify: str


@dataclass(slots=True)
class MessageFacts:
    queue_id: str
    sender: str
    arrived_at: datetime
    expires_at: datetime
    envid: str
    ret: str
    removed: bool = field(default=False)


_MESSAGE_FACTS = _by_dialect(lambda member: select(
    Message.queue_id, Message.sender, Message.arrived_at, Message.expires_at, Message.envid,
    Message.ret).where(member(Message.queue_id, "qids")))


async def message_facts(conn: AsyncConnection, qids: set[str]) -> dict[str, MessageFacts]:
    """Envelope facts of the messages results refer to (missing: already gone)."""
    if not qids:
        return {}
    rows = await conn.execute(_for(conn, _MESSAGE_FACTS), {"qids": sorted(qids)})
    return {r.queue_id: MessageFacts(r.queue_id, r.sender, r.arrived_at, r.expires_at,
                                     r.envid, r.ret) for r in rows}


def _settle_values(status: Any) -> dict[str, Any]:
    return {"status": status, "transport": bindparam("b_transport"),
            "nexthop": bindparam("b_nexthop"), "dsn_status": bindparam("b_dsn"),
            "last_reply": bindparam("b_reply"), "lease_owner": None, "lease_expires_at": None}


def _bind(row: Settled, **extra: Any) -> dict[str, Any]:
    return {"b_id": row.id, "b_attempt": row.attempt, "b_transport": row.transport,
            "b_nexthop": row.nexthop, "b_dsn": row.dsn, "b_reply": row.reply, **extra}


# Whatever attempt delivered it: the first result that arrives wins.
_FINISH: Update = (update(Recipient)
                   .where(and_(Recipient.id == bindparam("b_id"), open_recipient()))
                   .values(**_settle_values(RecipientStatus.DELIVERED))
                   .execution_options(synchronize_session=False))
# Only the attempt that is current: an old attempt's deferral must not push
# back a newer one.
_DEFER: Update = (update(Recipient)
                  .where(and_(Recipient.id == bindparam("b_id"), open_recipient(),
                              Recipient.attempts == bindparam("b_attempt")))
                  .values(**_settle_values(RecipientStatus.DEFERRED),
                          next_attempt_at=bindparam("b_next"))
                  .execution_options(synchronize_session=False))


async def mark_delivered(conn: AsyncConnection, rows: Sequence[Settled]) -> None:
    if rows:
        await conn.execute(_FINISH, [_bind(r) for r in rows])


async def mark_deferred(
    conn: AsyncConnection, rows: Sequence[tuple[Settled, datetime]]
) -> None:
    """Each row with its next attempt time (Postfix's backoff, qmgr's choice)."""
    if rows:
        await conn.execute(_DEFER, [_bind(r, b_next=when) for r, when in rows])


async def mark_failed(
    conn: AsyncConnection, row: Settled, status: RecipientStatus
) -> Failed | None:
    """Bounce or expire one recipient; None when it was already final (a
    repeated result), so only a real transition queues a notice."""
    changed = await conn.execute(
        update(Recipient)
        .where(Recipient.id == row.id, open_recipient())
        .values(status=status, transport=row.transport, nexthop=row.nexthop,
                dsn_status=row.dsn, last_reply=row.reply, lease_owner=None,
                lease_expires_at=None)
        .returning(Recipient.orig_rcpt, Recipient.orcpt, Recipient.notify)
        .execution_options(synchronize_session=False)
    )
    found = changed.first()
    return None if found is None else Failed(row.id, found.orig_rcpt, found.orcpt, found.notify)


async def open_dsn_facts(conn: AsyncConnection, ids: Sequence[int]) -> dict[int, Failed]:
    """The DSN facts (original recipient, ORCPT, NOTIFY) of those of ``ids``
    still open, locked on PostgreSQL until the caller's transaction ends:
    read before a result finishes or defers them, so that only a real
    transition sends a success or delay notice."""
    found: dict[int, Failed] = {}
    for part in _chunks(list(ids)):
        rows = await conn.execute(
            select(Recipient.id, Recipient.orig_rcpt, Recipient.orcpt, Recipient.notify)
            .where(Recipient.id.in_(part), open_recipient())
            .with_for_update(of=Recipient))
        found.update({r.id: Failed(r.id, r.orig_rcpt, r.orcpt, r.notify) for r in rows})
    return found


async def last_deferrals(conn: AsyncConnection, qids: set[str]) -> dict[str, datetime]:
    """When each message was last logged deferred (none: never), from the
    delivery log: what tells whether its delay warning went out already."""
    if not qids:
        return {}
    rows = await conn.execute(
        select(DeliveryLog.queue_id, func.max(DeliveryLog.logged_at))
        .where(DeliveryLog.queue_id.in_(qids), DeliveryLog.status == RecipientStatus.DEFERRED)
        .group_by(DeliveryLog.queue_id))
    return {qid: when for qid, when in rows if when is not None}


async def hold_message(conn: AsyncConnection, queue_id: str) -> int:
    """Put a message on hold (postsuper -h) and give up the leases on its
    open recipients: nothing delivers it until an administrator releases it.
    Returns how many open recipients it holds."""
    await conn.execute(update(Message).where(Message.queue_id == queue_id)
                       .values(state=MessageState.HOLD))
    return (await conn.execute(
        update(Recipient).where(Recipient.queue_id == queue_id, open_recipient())
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False))).rowcount


_INSERT_LOG = insert(DeliveryLog)


async def log_attempts(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Delivery log rows (DeliveryLog columns), one per recipient and attempt."""
    if rows:
        await conn.execute(_INSERT_LOG, list(rows))


_DEFER_MESSAGES = _by_dialect(lambda member: update(Message)
                              .where(member(Message.queue_id, "qids"),
                                     Message.state == MessageState.ACTIVE)
                              .values(state=MessageState.DEFERRED))


async def mark_messages_deferred(conn: AsyncConnection, qids: set[str]) -> None:
    """Active messages with a deferred recipient move to the deferred queue."""
    if qids:
        await conn.execute(_for(conn, _DEFER_MESSAGES), {"qids": sorted(qids)})


_REMOVE_FINISHED = _by_dialect(lambda member: (
    delete(Message)
    .where(member(Message.queue_id, "qids"),
           ~exists().where(Recipient.queue_id == Message.queue_id, open_recipient()))
    .returning(Message.queue_id)
    .execution_options(synchronize_session=False)))


async def remove_finished(conn: AsyncConnection, qids: set[str]) -> set[str]:
    """Delete messages none of whose recipients is still open; returns them."""
    if not qids:
        return set()
    removed = await conn.execute(_for(conn, _REMOVE_FINISHED), {"qids": sorted(qids)})
    return set(removed.scalars())


async def bodies(conn: AsyncConnection, qids: set[str]) -> dict[str, bytes]:
    if not qids:
        return {}
    rows = await conn.execute(select(Message.queue_id, Message.body)
                              .where(Message.queue_id.in_(qids)))
    return {qid: bytes(body) for qid, body in rows}


# -- the queue tools (mailq, postqueue, postsuper) -------------------------------


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    address: str
    orig_address: str  # as received (Postfix's ORCPT or the address itself)
    status: str
    attempts: int
    next_attempt_at: datetime
    transport: str
    nexthop: str
    dsn: str
    reason: str


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    queue_id: str
    state: str
    size: int
    arrived_at: datetime
    sender: str
    recipients: list[QueuedRecipient]


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages a queue tool acts on, like postsuper's operands:
    these queue ids, or ``all`` of them, narrowed by queue (state),
    envelope sender ("" is the null sender) and recipient domain (a
    message with an open recipient there)."""

    queue_ids: Sequence[str] = ()
    all: bool = False
    state: MessageState | None = None
    sender: str | None = None
    recipient_domain: str | None = None

    def where(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if not self.all:
            where.append(Message.queue_id.in_(list(self.queue_ids)))
        if self.state is not None:
            where.append(Message.state == self.state)
        if self.sender is not None:
            where.append(func.lower(Message.sender) == self.sender.lower())
        if self.recipient_domain is not None:
            where.append(exists().where(Recipient.queue_id == Message.queue_id,
                                        open_recipient(), _in_domain(self.recipient_domain)))
        return where


def _in_domain(domain: str) -> ColumnElement[bool]:
    return func.lower(Recipient.address).like(
        "%@" + domain.lower().lstrip("@").replace("\\", "").replace("%", "").replace("_", "\\_"),
        escape="\\")


async def list_messages(
    engine: AsyncEngine, selection: Selection | None = None, *, limit: int = 1000,
) -> list[QueuedMessage]:
    """Messages in Postfix's showq order (active, incoming, deferred, hold;
    by queue id within each) with their open recipients."""
    where = (selection or Selection(all=True)).where()
    order = case({MessageState.ACTIVE: 0, MessageState.INCOMING: 1,
                  MessageState.DEFERRED: 2}, value=Message.state, else_=3)
    async with engine.connect() as conn:
        msgs = (await conn.execute(
            select(Message.queue_id, Message.state, Message.size, Message.arrived_at,
                   Message.sender).where(*where).order_by(order, Message.queue_id)
            .limit(limit))).all()
        rcpts = (await conn.execute(
            select(Recipient).where(Recipient.queue_id.in_([m.queue_id for m in msgs]),
                                    open_recipient()).order_by(Recipient.id)
        )).all() if msgs else []
    by_qid: dict[str, list[QueuedRecipient]] = {}
    for r in rcpts:
        by_qid.setdefault(r.queue_id, []).append(QueuedRecipient(
            r.address, r.orig_rcpt or r.address, r.status, r.attempts, r.next_attempt_at,
            r.transport, r.nexthop, r.dsn_status, r.last_reply))
    return [QueuedMessage(m.queue_id, m.state, m.size, m.arrived_at, m.sender,
                          by_qid.get(m.queue_id, [])) for m in msgs]


async def select_queue_ids(engine: AsyncEngine, selection: Selection) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(Message.queue_id).where(*selection.where())
                                        .order_by(Message.queue_id))).scalars())


@dataclass(frozen=True, slots=True)
class MessageContent:
    client_name: str
    client_addr: str
    body: bytes


async def message_content(engine: AsyncEngine, queue_id: str) -> MessageContent | None:
    async with engine.connect() as conn:
        row = (await conn.execute(
            select(Message.body, Message.client_name, Message.client_addr)
            .where(Message.queue_id == queue_id))).first()
    return None if row is None else MessageContent(row.client_name, row.client_addr,
                                                   bytes(row.body))


async def was_queued(engine: AsyncEngine, queue_id: str) -> bool:
    """Whether a message with this queue id was ever committed: still queued,
    or already delivered, bounced or expired (its delivery log rows stay)."""
    async with engine.connect() as conn:
        queued = select(Message.queue_id).where(Message.queue_id == queue_id)
        logged = select(DeliveryLog.queue_id).where(DeliveryLog.queue_id == queue_id)
        row = (await conn.execute(queued.union_all(logged).limit(1))).first()
    return row is not None


async def exists_message(engine: AsyncEngine, queue_id: str) -> bool:
    return bool(await select_queue_ids(engine, Selection((queue_id,))))


def _ids(queue_ids: str | Sequence[str] | None) -> list[str] | None:
    return None if queue_ids is None else [queue_ids] if isinstance(queue_ids, str) else list(
        queue_ids)


async def reschedule(
    engine: AsyncEngine, queue_ids: str | Sequence[str] | None, now: datetime, *,
    forget_route: bool = False,
) -> int:
    """Make open recipients due now (postqueue -f / -i; None: every
    message); ``forget_route`` also drops the transport and next hop they
    last took (postsuper -r). Returns how many recipients were touched."""
    values: dict[str, Any] = {"next_attempt_at": now}
    if forget_route:
        values.update(transport="", nexthop="")
    stmt = update(Recipient).where(open_recipient()).values(**values)
    ids = _ids(queue_ids)
    async with engine.begin() as conn:
        if ids is None:
            return (await conn.execute(stmt)).rowcount
        return sum([(await conn.execute(stmt.where(Recipient.queue_id.in_(part)))).rowcount
                    for part in _chunks(ids)])


async def reschedule_site(engine: AsyncEngine, domain: str, now: datetime) -> int:
    """Make the open recipients in ``domain`` due now: postqueue -s / SMTP
    ETRN (the fast flush service's per-site flush). Returns how many."""
    async with engine.begin() as conn:
        return (await conn.execute(
            update(Recipient).where(open_recipient(), _in_domain(domain))
            .values(next_attempt_at=now).execution_options(synchronize_session=False)
        )).rowcount


async def set_state(
    engine: AsyncEngine, queue_ids: str | Sequence[str], state: MessageState
) -> int:
    """Put messages on hold or back in the queue (postsuper -h / -H);
    returns how many messages changed queue."""
    ids = _ids(queue_ids) or []
    async with engine.begin() as conn:
        return sum([(await conn.execute(
            update(Message).where(Message.queue_id.in_(part), Message.state != state)
            .values(state=state).execution_options(synchronize_session=False))).rowcount
            for part in _chunks(ids)])


async def delete_messages(engine: AsyncEngine, queue_ids: str | Sequence[str]) -> int:
    """Remove messages and their recipients (postsuper -d); returns how many
    recipients went with them."""
    ids = _ids(queue_ids) or []
    count = 0
    async with engine.begin() as conn:
        for part in _chunks(ids):
            count += (await conn.execute(delete(Recipient).where(
                Recipient.queue_id.in_(part)))).rowcount
            await conn.execute(delete(Message).where(Message.queue_id.in_(part)))
    return count


# -- the queue's shape (the metrics a Postfix dashboard reads from showq) ----------


@dataclass(frozen=True, slots=True)
class QueueShape:
    """One queue's messages counted below each size and age bound
    (cumulative, as a Prometheus histogram's buckets), with their totals."""

    state: str
    count: int
    size_sum: int
    age_sum: float
    size_le: list[int]  # messages with size <= SIZE_BOUNDS[i]
    age_le: list[int]  # messages with age <= AGE_BOUNDS[i] seconds


SIZE_BOUNDS = (1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)
AGE_BOUNDS = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)


async def queue_shape(engine: AsyncEngine, now: datetime) -> list[QueueShape]:
    """Per queue (incoming, active, deferred, hold): counts and histogram
    buckets of message size and age, in one aggregate query."""
    columns: list[Any] = [Message.state, func.count(), func.coalesce(func.sum(Message.size), 0)]
    columns += [func.sum(case((Message.size <= b, 1), else_=0)) for b in SIZE_BOUNDS]
    columns += [func.sum(case((Message.arrived_at >= now - timedelta(seconds=b), 1), else_=0))
                for b in AGE_BOUNDS]
    async with engine.connect() as conn:
        columns.append(func.coalesce(func.sum(_epoch(conn, Message.arrived_at)), 0))
        rows = (await conn.execute(select(*columns).group_by(Message.state))).all()
    n, m = len(SIZE_BOUNDS), len(AGE_BOUNDS)
    found = {}
    for r in rows:
        count = int(r[1])
        found[str(r[0])] = QueueShape(
            str(r[0]), count, int(r[2]), max(0.0, count * now.timestamp() - float(r[-1])),
            [int(v or 0) for v in r[3:3 + n]], [int(v or 0) for v in r[3 + n:3 + n + m]])
    return [found.get(state) or QueueShape(state, 0, 0, 0.0, [0] * n, [0] * m)
            for state in MessageState]


def _epoch(conn: AsyncConnection, column: Any) -> Any:
    """A timestamp column as seconds since the epoch, in the dialect's words."""
    if conn.dialect.name == "postgresql":
        return func.extract("epoch", column)
    return cast(func.strftime("%s", column), Float)
