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

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db import queue
from postfleet.core.db.status import MessageState
from postfleet.qmgr.scheduler import Scheduler

QUEUE_LIST_LIMIT = 1000


# The queue store's own records are the API's views (FastAPI serves
# dataclasses): one shape, spelled once.
MessageView = queue.QueuedMessage


class MessageDetail(BaseModel):
    message: MessageView
    client: str
    headers: str


class ActionResult(BaseModel):
    queue_id: str | None
    action: str
    recipients: int


def make_api(engine: AsyncEngine, scheduler: Scheduler) -> FastAPI:
    app = FastAPI(title="postfleet qmgr", version="1",
                  description="Queue administration: postfleet's mailq/postqueue/postsuper.")

    @app.get("/api/v1/queue", response_model=list[MessageView])
    async def list_queue(state: MessageState | None = None,
                         limit: int = QUEUE_LIST_LIMIT) -> list[MessageView]:
        return await queue.list_messages(engine, state=state, limit=limit)

    @app.get("/api/v1/queue/{queue_id}", response_model=MessageDetail)
    async def show(queue_id: str) -> MessageDetail:
        found = await queue.list_messages(engine, queue_id=queue_id, limit=1)
        content = await queue.message_content(engine, queue_id)
        if not found or content is None:
            raise HTTPException(404, f"no message {queue_id} in the queue")
        headers = content.body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        return MessageDetail(message=found[0], headers=headers,
                             client=f"{content.client_name}[{content.client_addr}]")

    async def _reschedule(queue_id: str | None, action: str,
                          forget_route: bool = False) -> ActionResult:
        count = await queue.reschedule(engine, queue_id, datetime.now(UTC),
                                       forget_route=forget_route)
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
        return await _reschedule(queue_id, "requeue", forget_route=True)

    async def _set_state(queue_id: str, state: MessageState, action: str) -> ActionResult:
        await _exists(queue_id)
        await queue.set_state(engine, queue_id, state)
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
        count = await queue.delete_message(engine, queue_id)
        return ActionResult(queue_id=queue_id, action="delete", recipients=count)

    async def _exists(queue_id: str) -> None:
        if not await queue.exists_message(engine, queue_id):
            raise HTTPException(404, f"no message {queue_id} in the queue")

    return app
