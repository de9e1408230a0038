"""qmgr's admin API (FastAPI, OpenAPI at /docs and /openapi.json): the queue
tools of Postfix.

    GET    /api/v1/queue                   mailq / postqueue -p / -j
    GET    /api/v1/queue/{id}              postcat -q (envelope, headers)
    POST   /api/v1/queue/flush             postqueue -f; ?site=DOMAIN: postqueue -s
    POST   /api/v1/queue/{id}/flush        postqueue -i
    POST   /api/v1/queue/{id}/hold         postsuper -h
    POST   /api/v1/queue/{id}/release      postsuper -H
    POST   /api/v1/queue/{id}/requeue      postsuper -r
    DELETE /api/v1/queue/{id}              postsuper -d
    POST   /api/v1/queue/select/{action}   postsuper -d/-h/-H/-r ALL [queue], or
                                           by queue ids, sender, recipient domain

Each message a postsuper action changes is logged as postsuper logs it
(``postsuper[pid]: ID: removed``, ``placed on hold``, ``released from
hold``, ``requeued``).

Postfix parameters: none (the queue store is the queue directories).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated

from fastapi import FastAPI, HTTPException, Path, Query
from pydantic import BaseModel, Field, StrictBool
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db import queue
from postfleet.core.db.status import MessageState
from postfleet.core.maillog import maillog
from postfleet.qmgr.scheduler import Scheduler

QUEUE_LIST_LIMIT = 1000
# Queue ids are letters and digits (core.queueid); anything else is no id.
QUEUE_ID = r"^[0-9A-Za-z]{1,40}$"
# Addresses and domains as a client may write them, without control characters.
TEXT = r"^[^\x00-\x1f\x7f]*$"

QueueId = Annotated[str, Path(pattern=QUEUE_ID, description="a queue id")]
Sender = Annotated[str | None, Query(
    max_length=320, pattern=TEXT,
    description="envelope sender (empty: the null sender <>)")]
Domain = Annotated[str | None, Query(
    min_length=1, max_length=255, pattern=TEXT,
    description="messages with an undelivered recipient in this domain")]


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
    messages: int = 0
    queue_ids: list[str] = Field(default_factory=list)


class Action(enum.StrEnum):
    FLUSH = "flush"
    HOLD = "hold"
    RELEASE = "release"
    REQUEUE = "requeue"
    DELETE = "delete"


class SelectionIn(BaseModel):
    """postsuper's operands: queue ids, or ALL (narrowed by the filters)."""

    queue_ids: list[Annotated[str, Field(pattern=QUEUE_ID)]] = Field(
        default_factory=list, max_length=10000)
    all: StrictBool = False
    state: MessageState | None = None
    sender: Annotated[str | None, Field(max_length=320, pattern=TEXT)] = None
    recipient_domain: Annotated[str | None, Field(min_length=1, max_length=255,
                                                  pattern=TEXT)] = None

    def selection(self) -> queue.Selection:
        return queue.Selection(tuple(self.queue_ids), self.all, self.state, self.sender,
                               self.recipient_domain)


# What postsuper logs for each message an action changed.
_LOGGED = {Action.DELETE: "removed", Action.HOLD: "placed on hold",
           Action.RELEASE: "released from hold", Action.REQUEUE: "requeued"}


def make_api(engine: AsyncEngine, scheduler: Scheduler) -> FastAPI:
    app = FastAPI(title="postfleet qmgr", version="1",
                  description="Queue administration: postfleet's mailq/postqueue/postsuper.")

    @app.get("/api/v1/queue", response_model=list[MessageView])
    async def list_queue(state: MessageState | None = None, sender: Sender = None,
                         recipient_domain: Domain = None,
                         limit: Annotated[int, Query(ge=0, le=100000)] = QUEUE_LIST_LIMIT,
                         ) -> list[MessageView]:
        """The queue (postqueue -p), in showq's order, with open recipients."""
        selection = queue.Selection(all=True, state=state, sender=sender,
                                    recipient_domain=recipient_domain)
        return await queue.list_messages(engine, selection, limit=limit)

    @app.get("/api/v1/queue/{queue_id}", response_model=MessageDetail,
             responses={404: {"description": "no such message"}})
    async def show(queue_id: QueueId) -> MessageDetail:
        found = await queue.list_messages(engine, queue.Selection((queue_id,)), limit=1)
        content = await queue.message_content(engine, queue_id)
        if not found or content is None:
            raise HTTPException(404, f"no message {queue_id} in the queue")
        headers = content.body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        return MessageDetail(message=found[0], headers=headers,
                             client=f"{content.client_name}[{content.client_addr}]")

    @app.post("/api/v1/queue/flush", response_model=ActionResult)
    async def flush_all(site: Domain = None) -> ActionResult:
        """Deliver deferred mail now: all of it (postqueue -f), or the mail
        for one site (postqueue -s, what SMTP ETRN asks for)."""
        now = datetime.now(UTC)
        if site is not None:
            count = await queue.reschedule_site(engine, site, now)
        else:
            count = await queue.reschedule(engine, None, now)
        scheduler.wake()
        return ActionResult(queue_id=None, action=Action.FLUSH, recipients=count)

    @app.post("/api/v1/queue/select/{action}", response_model=ActionResult,
              responses={400: {"description": "the body is not JSON"}})
    async def act_on_selection(action: Action, body: SelectionIn) -> ActionResult:
        """One action on every message selected: ``{"all": true, "state":
        "deferred"}`` is ``postsuper -d ALL deferred``."""
        qids = await queue.select_queue_ids(engine, body.selection())
        return await _act(action, qids, None)

    async def _single(queue_id: str, action: Action) -> ActionResult:
        if not await queue.exists_message(engine, queue_id):
            raise HTTPException(404, f"no message {queue_id} in the queue")
        return await _act(action, [queue_id], queue_id)

    async def _act(action: Action, qids: list[str], queue_id: str | None) -> ActionResult:
        now = datetime.now(UTC)
        changed = qids
        recipients = 0
        if action is Action.DELETE:
            recipients = await queue.delete_messages(engine, qids)
        elif action is Action.HOLD:
            held = set(await queue.select_queue_ids(
                engine, queue.Selection(qids, state=MessageState.HOLD)))
            changed = [q for q in qids if q not in held]
            await queue.set_state(engine, changed, MessageState.HOLD)
        elif action is Action.RELEASE:
            changed = await queue.select_queue_ids(
                engine, queue.Selection(qids, state=MessageState.HOLD))
            await queue.set_state(engine, changed, MessageState.DEFERRED)
            recipients = await queue.reschedule(engine, changed, now)
        else:
            recipients = await queue.reschedule(engine, qids, now,
                                                forget_route=action is Action.REQUEUE)
        if action is not Action.FLUSH:
            for qid in changed:
                maillog("postsuper", qid, _LOGGED[action])
        if action is not Action.DELETE:
            scheduler.wake()
        return ActionResult(queue_id=queue_id, action=action, recipients=recipients,
                            messages=len(changed), queue_ids=changed)

    @app.post("/api/v1/queue/{queue_id}/{action}", response_model=ActionResult,
              responses={404: {"description": "no such message"}})
    async def act_on_one(queue_id: QueueId, action: Action) -> ActionResult:
        return await _single(queue_id, action)

    @app.delete("/api/v1/queue/{queue_id}", response_model=ActionResult,
                responses={404: {"description": "no such message"}})
    async def remove(queue_id: QueueId) -> ActionResult:
        return await _single(queue_id, Action.DELETE)

    return app
