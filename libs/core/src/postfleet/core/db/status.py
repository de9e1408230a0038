"""The queue's vocabulary, spelled once: message states, recipient statuses
and delivery outcomes.

Every role says these words through this module: cleanup queues messages
``incoming`` with ``pending`` recipients, qmgr moves them, delivery reports
an ``Outcome`` per recipient (on the bus as the proto enum
``delivery.v1.Outcome``), and the mail log's ``status=`` word is the
outcome's value, as in Postfix's ``status=sent|deferred|bounced|expired``.

Postfix parameters: none (these are Postfix's queue names and log words).
"""

from __future__ import annotations

import enum

from postfleet.core.proto.delivery.v1 import delivery_pb2


class MessageState(enum.StrEnum):
    """Postfix's queues, as a column: incoming, active, deferred, hold."""

    INCOMING = "incoming"
    ACTIVE = "active"
    DEFERRED = "deferred"
    HOLD = "hold"


class RecipientStatus(enum.StrEnum):
    """Where one recipient stands. Open ones are still to be delivered."""

    PENDING = "pending"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    EXPIRED = "expired"

    @property
    def open(self) -> bool:
        return self in OPEN_STATUSES


# Still to be delivered: claimable when due, counted in the queue listing.
OPEN_STATUSES = (RecipientStatus.PENDING, RecipientStatus.DEFERRED)
# Finished: delivered, or bounced/expired with a notice queued.
FINAL_STATUSES = (RecipientStatus.DELIVERED, RecipientStatus.BOUNCED, RecipientStatus.EXPIRED)


class Outcome(enum.StrEnum):
    """A delivery attempt's outcome for one recipient; the value is the mail
    log's ``status=`` word."""

    SENT = "sent"
    DEFERRED = "deferred"
    BOUNCED = "bounced"

    @classmethod
    def from_dsn(cls, dsn: str) -> Outcome:
        """The outcome an enhanced status code implies: 2.x.x sent, 5.x.x
        bounced, anything else deferred (retrying is the safe guess)."""
        klass = dsn[:1]
        return cls.SENT if klass == "2" else cls.BOUNCED if klass == "5" else cls.DEFERRED

    def to_proto(self) -> delivery_pb2.Outcome.ValueType:
        return _TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: delivery_pb2.Outcome.ValueType) -> Outcome:
        """The outcome a result carries; an unknown value (a newer sender, a
        damaged message) counts as deferred, never as delivered."""
        return _FROM_PROTO.get(value, cls.DEFERRED)

    @property
    def recipient_status(self) -> RecipientStatus:
        """The status a recipient takes when this outcome is applied."""
        return _TO_STATUS[self]


_TO_PROTO = {
    Outcome.SENT: delivery_pb2.OUTCOME_SENT,
    Outcome.DEFERRED: delivery_pb2.OUTCOME_DEFERRED,
    Outcome.BOUNCED: delivery_pb2.OUTCOME_BOUNCED,
}
_FROM_PROTO = {v: k for k, v in _TO_PROTO.items()}
_TO_STATUS = {
    Outcome.SENT: RecipientStatus.DELIVERED,
    Outcome.DEFERRED: RecipientStatus.DEFERRED,
    Outcome.BOUNCED: RecipientStatus.BOUNCED,
}
