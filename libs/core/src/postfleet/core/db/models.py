"""The queue store's schema (SQLAlchemy 2.0): messages, recipients, delivery log.

Read and written only through ``postfleet.core.db.queue`` (the queue
store's operations), in the vocabulary of ``postfleet.core.db.status``.
Column meanings follow Postfix's queue files: a message carries its envelope
and content; each recipient carries its own delivery state, as Postfix's
per-recipient records do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from postfleet.core.db.status import MessageState, RecipientStatus

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on both backends (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the queue store; use UTC")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Message(Base):
    __tablename__ = "messages"

    queue_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sender: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    client_name: Mapped[str] = mapped_column(String(255), default="")
    client_addr: Mapped[str] = mapped_column(String(64), default="")
    helo: Mapped[str] = mapped_column(String(255), default="")
    protocol: Mapped[str] = mapped_column(String(16), default="")
    sasl_username: Mapped[str] = mapped_column(String(255), default="")
    trace_id: Mapped[str] = mapped_column(String(64), default="")
    content_filter: Mapped[str] = mapped_column(String(255), default="")
    ret: Mapped[str] = mapped_column(String(8), default="")
    envid: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default=MessageState.INCOMING)
    arrived_at: Mapped[datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Recipient(Base):
    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    queue_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("messages.queue_id", ondelete="CASCADE")
    )
    address: Mapped[str] = mapped_column(String(512))
    orig_rcpt: Mapped[str] = mapped_column(String(512), default="")
    orcpt: Mapped[str] = mapped_column(String(512), default="")
    notify: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default=RecipientStatus.PENDING)
    transport: Mapped[str] = mapped_column(String(64), default="")
    nexthop: Mapped[str] = mapped_column(String(255), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime())
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime(), nullable=True
    )
    dsn_status: Mapped[str] = mapped_column(String(16), default="")
    last_reply: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (
        Index("ix_recipients_due", "status", "next_attempt_at"),
        Index("ix_recipients_queue_id", "queue_id"),
        Index("ix_recipients_lease_owner", "lease_owner"),
    )


class DeliveryLog(Base):
    """One row per attempt and recipient: the data behind Postfix's
    ``to=<…>, relay=…, delay=…, dsn=…, status=…`` log line."""

    __tablename__ = "delivery_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    queue_id: Mapped[str] = mapped_column(String(32), index=True)
    recipient_id: Mapped[int] = mapped_column(BigInteger)
    address: Mapped[str] = mapped_column(String(512))
    attempt: Mapped[int] = mapped_column(Integer)
    transport: Mapped[str] = mapped_column(String(64))
    relay: Mapped[str] = mapped_column(String(255))
    delay: Mapped[float] = mapped_column()
    dsn: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reply: Mapped[str] = mapped_column(Text)
    logged_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DestinationSlot(Base):
    """A delivery job in flight to a destination (``transport:nexthop``), for
    per-destination concurrency held by the whole fleet: a qmgr dispatches
    a job only when it could insert its slot under the limit. The slot goes
    when the job's result is applied (in that transaction), or when its
    lease runs out because its qmgr died (the owner renews it while alive)."""

    __tablename__ = "destination_slots"

    job_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    destination: Mapped[str] = mapped_column(String(320))
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())

    __table_args__ = (
        Index("ix_destination_slots_destination", "destination", "expires_at"),
        Index("ix_destination_slots_owner", "owner"),
    )


class DestinationPacing(Base):
    """When a destination may next get a delivery (default_destination_rate_delay),
    fleet-wide: Postfix's per-destination rate delay."""

    __tablename__ = "destination_pacing"

    destination: Mapped[str] = mapped_column(String(320), primary_key=True)
    next_at: Mapped[datetime] = mapped_column(UtcDateTime())
