"""Reading what a job delivers from the queue store (``core.db.queue``).

One connection per job: which of the job's recipients it still speaks for
(open, and not claimed again since: a job left on the bus by a qmgr that
died is superseded by the next attempt and must not deliver twice), then
the content, by primary key. The envelope comes with the job. Delivery
never writes the queue store: qmgr applies the results.

The body is stored as it will be sent: CRLF line endings, not dot-stuffed.
Content that cannot be read raises ``UnreadableContent``: the message goes
on hold rather than being retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.queue import Origin, load_job, message_origin
from postfleet.core.proto.delivery.v1 import delivery_pb2


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What a transport delivers: the job's envelope and the stored content."""

    queue_id: str
    sender: str
    body: bytes
    # Where the message came from, read only when a transport needs it
    # (smtp_send_xforward_command).
    origin: Origin | None = None
    # RFC 3461 RET and ENVID, and the sender's SMTPUTF8 request (RFC 6531),
    # from the job.
    ret: str = ""
    envid: str = ""
    smtputf8: bool = False


class MessageStore:
    def __init__(self, engine: AsyncEngine, *, with_origin: bool = False) -> None:
        self.engine = engine
        self.with_origin = with_origin

    async def load(self, job: delivery_pb2.Job) -> tuple[StoredMessage | None, set[int]]:
        """The message and the ids of the recipients the job still speaks
        for; (None, empty) when it speaks for none (gone or superseded)."""
        async with self.engine.connect() as conn:
            body, current = await load_job(
                conn, job.queue_id, [r.id for r in job.recipients], job.attempt)
            origin = (await message_origin(conn, job.queue_id)
                      if self.with_origin and body is not None else None)
        if body is None:
            return None, set()
        message = StoredMessage(job.queue_id, job.sender, body, origin, job.ret, job.envid,
                                job.smtputf8)
        return message, current
