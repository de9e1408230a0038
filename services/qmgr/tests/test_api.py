"""The queue tools' API (mailq, postqueue, postsuper) on a queue with
messages in every state: list and show, hold and release, requeue, flush,
delete, each checked in the queue store itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message, Recipient
from postfleet.core.db.queue import claim_due
from postfleet.core.db.status import MessageState, RecipientStatus
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.store import RoutingView
from postfleet.qmgr.api import make_api
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

from .conftest import queue_message

LATER = timedelta(hours=1)


@pytest.fixture
async def api(engine: AsyncEngine) -> AsyncIterator[tuple[httpx.AsyncClient, Scheduler]]:
    async def publish(_job: delivery_pb2.Job) -> None:
        raise AssertionError("the API never dispatches by itself")

    scheduler = Scheduler(QmgrSettings(qmgr_owner="q1"), engine, RoutingView(), publish)
    transport = httpx.ASGITransport(app=make_api(engine, scheduler))
    async with httpx.AsyncClient(transport=transport, base_url="http://qmgr") as client:
        yield client, scheduler


async def _defer(engine: AsyncEngine, qid: str, **values: object) -> None:
    """Make a message deferred, due in an hour, as a 4xx would."""
    async with engine.begin() as conn:
        await conn.execute(update(Recipient).where(Recipient.queue_id == qid).values(
            status=RecipientStatus.DEFERRED, next_attempt_at=datetime.now(UTC) + LATER,
            transport="smtp", nexthop="[192.0.2.1]:25", dsn_status="4.4.1",
            last_reply="connect to 192.0.2.1[192.0.2.1]:25: Connection refused", **values))
        await conn.execute(update(Message).where(Message.queue_id == qid)
                           .values(state=MessageState.DEFERRED))


async def _rcpts(engine: AsyncEngine, qid: str) -> list:
    async with engine.connect() as conn:
        return list(await conn.execute(select(Recipient).where(Recipient.queue_id == qid)))


async def _state(engine: AsyncEngine, qid: str) -> str | None:
    async with engine.connect() as conn:
        return (await conn.execute(select(Message.state).where(
            Message.queue_id == qid))).scalar_one_or_none()


async def test_list_and_show_describe_each_message_and_its_open_recipients(
        engine: AsyncEngine, api: tuple) -> None:
    client, _ = api
    fresh = await queue_message(engine, ["a@y.test", "b@y.test"])
    deferred = await queue_message(engine, ["c@z.test"], sender="")
    await _defer(engine, deferred)
    listing = (await client.get("/api/v1/queue")).json()
    assert [(m["queue_id"], m["state"], m["sender"]) for m in listing] == [
        (fresh, "incoming", "alice@x.test"), (deferred, "deferred", "")]
    assert [r["address"] for r in listing[0]["recipients"]] == ["a@y.test", "b@y.test"]
    (why,) = listing[1]["recipients"]
    assert (why["status"], why["dsn"], why["nexthop"]) == ("deferred", "4.4.1", "[192.0.2.1]:25")
    only = (await client.get("/api/v1/queue", params={"state": "deferred"})).json()
    assert [m["queue_id"] for m in only] == [deferred]
    shown = (await client.get(f"/api/v1/queue/{fresh}")).json()
    assert shown["client"] == "c.test[192.0.2.9]" and shown["headers"] == "Subject: s"
    assert shown["message"]["queue_id"] == fresh
    assert (await client.get("/api/v1/queue/NOSUCHID")).status_code == 404


async def test_hold_keeps_a_message_from_delivery_until_released(
        engine: AsyncEngine, api: tuple) -> None:
    client, scheduler = api
    qid = await queue_message(engine, ["a@y.test"])
    held = (await client.post(f"/api/v1/queue/{qid}/hold")).json()
    assert held == {"queue_id": qid, "action": "hold", "recipients": 0, "messages": 1,
                    "queue_ids": [qid]}
    assert await _state(engine, qid) == MessageState.HOLD
    assert await claim_due(engine, "q1", datetime.now(UTC), 60, 10) == []
    listed = (await client.get("/api/v1/queue", params={"state": "hold"})).json()
    assert [m["queue_id"] for m in listed] == [qid]

    scheduler.wakeup.clear()
    released = (await client.post(f"/api/v1/queue/{qid}/release")).json()
    assert released == {"queue_id": qid, "action": "release", "recipients": 1,
                        "messages": 1, "queue_ids": [qid]}
    assert await _state(engine, qid) == MessageState.DEFERRED
    assert scheduler.wakeup.is_set()  # qmgr looks at once, not at the next queue run
    assert [c.queue_id for c in await claim_due(engine, "q1", datetime.now(UTC), 60, 10)] == [
        qid]


async def test_flush_makes_deferred_mail_due_now(engine: AsyncEngine, api: tuple) -> None:
    client, _ = api
    one, two = (await queue_message(engine, ["a@y.test"]),
                await queue_message(engine, ["b@y.test"]))
    await _defer(engine, one)
    await _defer(engine, two)
    assert await claim_due(engine, "q1", datetime.now(UTC), 60, 10) == []
    flushed = (await client.post(f"/api/v1/queue/{one}/flush")).json()
    assert flushed["recipients"] == 1
    due = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    assert [c.queue_id for c in due] == [one]
    everything = (await client.post("/api/v1/queue/flush")).json()
    assert everything["queue_id"] is None and everything["recipients"] >= 1
    assert [c.queue_id for c in await claim_due(engine, "q2", datetime.now(UTC), 60, 10)] == [
        two]


async def test_requeue_forgets_the_route_and_retries_now(engine: AsyncEngine, api: tuple) -> None:
    client, _ = api
    qid = await queue_message(engine, ["a@y.test"])
    await _defer(engine, qid)
    assert (await client.post(f"/api/v1/queue/{qid}/requeue")).json()["recipients"] == 1
    (rcpt,) = await _rcpts(engine, qid)
    assert (rcpt.transport, rcpt.nexthop) == ("", "")
    assert rcpt.next_attempt_at <= datetime.now(UTC)


async def test_delete_removes_message_and_recipients(engine: AsyncEngine, api: tuple) -> None:
    client, _ = api
    keep = await queue_message(engine, ["k@y.test"])
    qid = await queue_message(engine, ["a@y.test", "b@y.test"])
    gone = (await client.delete(f"/api/v1/queue/{qid}")).json()
    assert gone == {"queue_id": qid, "action": "delete", "recipients": 2, "messages": 1,
                    "queue_ids": [qid]}
    assert await _state(engine, qid) is None and await _rcpts(engine, qid) == []
    assert (await client.delete(f"/api/v1/queue/{qid}")).status_code == 404
    assert [m["queue_id"] for m in (await client.get("/api/v1/queue")).json()] == [keep]


@pytest.mark.parametrize("action", ["hold", "release", "requeue", "flush"])
async def test_actions_on_an_unknown_id_say_404(api: tuple, action: str) -> None:
    client, _ = api
    answer = await client.post(f"/api/v1/queue/NOSUCHID/{action}")
    assert answer.status_code == 404 and "NOSUCHID" in answer.json()["detail"]


async def test_selections_act_like_postsuper_all_and_filters(
        engine: AsyncEngine, api: tuple) -> None:
    """postsuper -h/-H/-r/-d on ALL, ALL of one queue, a sender, a recipient
    domain; postqueue -s for a site."""
    client, _ = api
    fresh = await queue_message(engine, ["a@y.test"])
    deferred = await queue_message(engine, ["c@z.test", "d@Y.test"], sender="Bob@x.test")
    await _defer(engine, deferred)
    held = await queue_message(engine, ["e@w.test"], sender="")
    await client.post(f"/api/v1/queue/{held}/hold")

    async def act(action: str, **selection: object) -> dict:
        answer = await client.post(f"/api/v1/queue/select/{action}", json=selection)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert (await act("hold", all=True, sender="bob@x.test"))["queue_ids"] == [deferred]
    assert await _state(engine, deferred) == MessageState.HOLD
    # release acts on held messages only
    released = await act("release", all=True, recipient_domain="y.test")
    assert released["queue_ids"] == [deferred] and released["recipients"] == 2
    assert (await act("requeue", all=True, state="hold"))["queue_ids"] == [held]
    assert (await act("requeue", all=True, sender=""))["queue_ids"] == [held]
    assert (await act("flush", queue_ids=[fresh, "NOSUCHID"]))["queue_ids"] == [fresh]

    await _defer(engine, deferred)
    site = (await client.post("/api/v1/queue/flush", params={"site": "z.test"})).json()
    assert site["recipients"] == 1
    (c, d) = sorted(await _rcpts(engine, deferred), key=lambda r: r.address)
    assert c.next_attempt_at <= datetime.now(UTC) < d.next_attempt_at

    listed = (await client.get("/api/v1/queue", params={"recipient_domain": "w.test"})).json()
    assert [m["queue_id"] for m in listed] == [held]
    gone = await act("delete", all=True, state="deferred")
    assert gone["queue_ids"] == [deferred] and gone["recipients"] == 2
    assert (await act("delete", all=True))["messages"] == 2
    assert (await client.get("/api/v1/queue")).json() == []


async def test_bad_operands_are_refused_not_crashed(api: tuple) -> None:
    client, _ = api
    assert (await client.post("/api/v1/queue/select/explode", json={})).status_code == 422
    assert (await client.post("/api/v1/queue/select/delete",
                              json={"queue_ids": ["a b"]})).status_code == 422
    assert (await client.get("/api/v1/queue", params={"sender": "a\x00b"})).status_code == 422
