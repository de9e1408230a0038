"""Reading a message's content from the queue store (``core.db.queue``).

One indexed read per job (by queue id, the primary key); the envelope
comes with the job. Delivery never writes the queue store: qmgr applies the
results. A missing row means the message has already left the queue — the
job is a repeat and is dropped.

The body is stored as it will be sent: CRLF line endings, not dot-stuffed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.queue import load_body
from postfleet.core.proto.delivery.v1 import delivery_pb2


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What a transport delivers: the job's envelope and the stored content."""

    queue_id: str
    sender: str
    body: bytes


class MessageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, job: delivery_pb2.Job) -> StoredMessage | None:
        async with self.engine.connect() as conn:
            body = await load_body(conn, job.queue_id)
        return None if body is None else StoredMessage(job.queue_id, job.sender, body)
