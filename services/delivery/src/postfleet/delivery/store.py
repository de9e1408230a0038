"""Reading a message's envelope sender and content from the queue store.

One indexed read per job (by queue id, the primary key). Delivery never
writes the queue store: qmgr applies the results. A missing row means the
message has already left the queue — the job is a repeat and is dropped.

The body is stored as it will be sent: CRLF line endings, not dot-stuffed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message


@dataclass(frozen=True, slots=True)
class StoredMessage:
    queue_id: str
    sender: str
    body: bytes


# Built once; SQLAlchemy caches its compiled form.
_LOAD = select(Message.sender, Message.body).where(Message.queue_id == bindparam("qid"))


class MessageStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def load(self, queue_id: str) -> StoredMessage | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_LOAD, {"qid": queue_id})).first()
        if row is None:
            return None
        return StoredMessage(queue_id, row.sender, bytes(row.body))
