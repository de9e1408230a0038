"""qmgr's admin API (FastAPI, OpenAPI at /docs): the queue tools of Postfix.

    GET    /api/v1/queue                 mailq / postqueue -p
    GET    /api/v1/queue/{id}            postcat -q (envelope, headers)
    POST   /api/v1/queue/flush           postqueue -f
    POST   /api/v1/queue/{id}/flush      postqueue -i
    POST   /api/v1/queue/{id}/hold       postsuper -h
    POST   /api/v1/queue/{id}/release    postsuper -H
    POST   /api/v1/queue/{id}/requeue    postsuper -r
    DELETE /api/v1/queue/{id}            postsuper -d
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import (
    FINAL_STATUSES,
    Message,
    MessageState,
    Recipient,
    RecipientStatus,
)
from postfleet.qmgr.scheduler import Scheduler

QUEUE_LIST_LIMIT = 1000


class RecipientView(BaseModel):
    address: str
    status: str
    attempts: int
    next_attempt_at: datetime
    dsn: str
    reason: str


class MessageView(BaseModel):
    queue_id: str
    state: str
    size: int
    arrived_at: datetime
    sender: str
    recipients: list[RecipientView]


class MessageDetail(MessageView):
    client: str
    headers: str


class ActionResult(BaseModel):
    queue_id: str | None
    action: str
    recipients: int


def make_api(engine: AsyncEngine, scheduler: Scheduler) -> FastAPI:
    app = FastAPI(title="postfleet qmgr", version="1",
                  description="Queue administration: postfleet's mailq/postqueue/postsuper.")

    async def _views(where: Any, limit: int) -> list[MessageView]:
        async with engine.connect() as conn:
            msgs = (await conn.execute(
                select(Message.queue_id, Message.state, Message.size, Message.arrived_at,
                       Message.sender).where(where).order_by(Message.queue_id).limit(limit)
            )).all()
            rcpts = (await conn.execute(
                select(Recipient).where(Recipient.queue_id.in_([m.queue_id for m in msgs]),
                                        Recipient.status.not_in(FINAL_STATUSES))
                .order_by(Recipient.id)
            )).all()
        by_qid: dict[str, list[RecipientView]] = {}
        for r in rcpts:
            by_qid.setdefault(r.queue_id, []).append(RecipientView(
                address=r.address, status=r.status, attempts=r.attempts,
                next_attempt_at=r.next_attempt_at, dsn=r.dsn_status, reason=r.last_reply))
        return [MessageView(queue_id=m.queue_id, state=m.state, size=m.size,
                            arrived_at=m.arrived_at, sender=m.sender,
                            recipients=by_qid.get(m.queue_id, [])) for m in msgs]

    @app.get("/api/v1/queue", response_model=list[MessageView])
    async def list_queue(state: MessageState | None = None,
                         limit: int = QUEUE_LIST_LIMIT) -> list[MessageView]:
        where = Message.state == state if state else Message.queue_id.is_not(None)
        return await _views(where, limit)

    @app.get("/api/v1/queue/{queue_id}", response_model=MessageDetail)
    async def show(queue_id: str) -> MessageDetail:
        views = await _views(Message.queue_id == queue_id, 1)
        if not views:
            raise HTTPException(404, f"no message {queue_id} in the queue")
        async with engine.connect() as conn:
            row = (await conn.execute(
                select(Message.body, Message.client_name, Message.client_addr)
                .where(Message.queue_id == queue_id))).one()
        headers = row.body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        return MessageDetail(**views[0].model_dump(), headers=headers,
                             client=f"{row.client_name}[{row.client_addr}]")

    async def _reschedule(queue_id: str | None, action: str,
                          extra: dict[str, Any] | None = None) -> ActionResult:
        stmt = (update(Recipient)
                .where(Recipient.status.in_((RecipientStatus.PENDING, RecipientStatus.DEFERRED)))
                .values(next_attempt_at=datetime.now(UTC), **(extra or {})))
        if queue_id:
            stmt = stmt.where(Recipient.queue_id == queue_id)
        async with engine.begin() as conn:
            count = (await conn.execute(stmt)).rowcount
        scheduler.wake()
        return ActionResult(queue_id=queue_id, action=action, recipients=count)

    @app.post("/api/v1/queue/flush", response_model=ActionResult)
    async def flush_all() -> ActionResult:
        return await _reschedule(None, "flush")

    @app.post("/api/v1/queue/{queue_id}/flush", response_model=ActionResult)
    async def flush_one(queue_id: str) -> ActionResult:
        await _exists(queue_id)
        return await _reschedule(queue_id, "flush")

    @app.post("/api/v1/queue/{queue_id}/requeue", response_model=ActionResult)
    async def requeue(queue_id: str) -> ActionResult:
        await _exists(queue_id)
        return await _reschedule(queue_id, "requeue", {"transport": "", "nexthop": ""})

    async def _set_state(queue_id: str, state: MessageState, action: str) -> ActionResult:
        await _exists(queue_id)
        async with engine.begin() as conn:
            await conn.execute(update(Message).where(Message.queue_id == queue_id)
                               .values(state=state))
        if state is MessageState.HOLD:
            return ActionResult(queue_id=queue_id, action=action, recipients=0)
        return await _reschedule(queue_id, action)

    @app.post("/api/v1/queue/{queue_id}/hold", response_model=ActionResult)
    async def hold(queue_id: str) -> ActionResult:
        return await _set_state(queue_id, MessageState.HOLD, "hold")

    @app.post("/api/v1/queue/{queue_id}/release", response_model=ActionResult)
    async def release(queue_id: str) -> ActionResult:
        return await _set_state(queue_id, MessageState.DEFERRED, "release")

    @app.delete("/api/v1/queue/{queue_id}", response_model=ActionResult)
    async def remove(queue_id: str) -> ActionResult:
        await _exists(queue_id)
        async with engine.begin() as conn:
            count = (await conn.execute(delete(Recipient).where(
                Recipient.queue_id == queue_id))).rowcount
            await conn.execute(delete(Message).where(Message.queue_id == queue_id))
        return ActionResult(queue_id=queue_id, action="delete", recipients=count)

    async def _exists(queue_id: str) -> None:
        async with engine.connect() as conn:
            found = (await conn.execute(select(Message.queue_id)
                                        .where(Message.queue_id == queue_id))).first()
        if found is None:
            raise HTTPException(404, f"no message {queue_id} in the queue")

    return app
