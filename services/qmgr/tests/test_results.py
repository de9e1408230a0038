"""Results change the queue exactly once: delivered, deferred with backoff,
bounced with a notice to the sender, expired past the queue lifetime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import DeliveryLog, Message, Recipient
from postfleet.core.db.queue import claim_due
from postfleet.core.db.status import Outcome
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.results import ResultPolicy, apply_results

from .conftest import queue_message

POLICY = ResultPolicy(300, 4000, 5 * 86400)


def _result(claimed: list, statuses: list[tuple[str, str, str]]) -> delivery_pb2.Result:
    return delivery_pb2.Result(
        job_id=f"q1/{claimed[0].queue_id}/{claimed[0].id}/{claimed[0].attempt}",
        queue_id=claimed[0].queue_id, attempt=claimed[0].attempt, transport="smtp",
        nexthop="[sink.test]:2526", relay="sink.test[127.0.0.1]:2526",
        recipients=[delivery_pb2.RecipientResult(id=c.id, address=c.address,
                                                 outcome=Outcome(s).to_proto(), dsn=d,
                                                 reply=r)
                    for c, (s, d, r) in zip(claimed, statuses, strict=True)])


async def _rows(engine: AsyncEngine) -> tuple[list, list, list]:
    async with engine.connect() as conn:
        msgs = (await conn.execute(select(Message))).all()
        rcpts = (await conn.execute(select(Recipient).order_by(Recipient.id))).all()
        logs = (await conn.execute(select(DeliveryLog).order_by(DeliveryLog.id))).all()
    return msgs, rcpts, logs


async def test_delivered_recipients_leave_the_queue_and_are_logged(engine: AsyncEngine) -> None:
    await queue_message(engine, ["a@y.test"])
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("sent", "2.0.0", "250 2.0.0 Ok: queued as X")])
    applied = await apply_results(engine, [res], POLICY, "mx.test")
    assert applied.delivered == 1
    msgs, rcpts, logs = await _rows(engine)
    assert msgs == [] and rcpts == []
    assert [(lg.address, lg.status, lg.dsn, lg.relay) for lg in logs] == [
        ("a@y.test", "sent", "2.0.0", "sink.test[127.0.0.1]:2526")]
    # A repeated result (the bus may repeat anything) changes nothing more.
    again = await apply_results(engine, [res], POLICY, "mx.test")
    assert again.delivered == 0 and len((await _rows(engine))[2]) == 1


async def test_a_deferral_sets_the_next_attempt_and_keeps_the_message(
        engine: AsyncEngine) -> None:
    await queue_message(engine, ["a@y.test", "b@y.test"])
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("sent", "2.0.0", "250 ok"), ("deferred", "4.2.0", "450 busy")])
    before = datetime.now(UTC)
    await apply_results(engine, [res], POLICY, "mx.test")
    msgs, rcpts, _ = await _rows(engine)
    assert [m.state for m in msgs] == ["deferred"]
    assert [(r.address, r.status) for r in rcpts] == [("a@y.test", "delivered"),
                                                       ("b@y.test", "deferred")]
    deferred = rcpts[1]
    assert deferred.lease_owner is None and deferred.last_reply == "450 busy"
    # The recipient keeps the route it took (queue listings, flush by site).
    assert (deferred.transport, deferred.nexthop) == ("smtp", "[sink.test]:2526")
    assert deferred.next_attempt_at >= before + timedelta(seconds=299)
    # A stale deferral from an older attempt does not move a newer one.
    later = await claim_due(engine, "q1", deferred.next_attempt_at, 60, 10)
    assert [c.attempt for c in later] == [2]
    await apply_results(engine, [res], POLICY, "mx.test")
    _, rcpts, _ = await _rows(engine)
    assert rcpts[1].lease_owner == "q1"


async def test_a_bounce_queues_one_notice_to_the_sender(engine: AsyncEngine) -> None:
    qid = await queue_message(engine, ["a@y.test"], sender="alice@x.test")
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("bounced", "5.1.1", "host h[1.2.3.4] said: 550 5.1.1 <a@y.test>: "
                                                 "User unknown (in reply to RCPT TO command)")])
    res.recipients[0].diagnostic = "550 5.1.1 <a@y.test>: User unknown"
    applied = await apply_results(engine, [res], POLICY, "mx.test")
    await apply_results(engine, [res], POLICY, "mx.test")  # repeat: no second notice
    assert applied.bounced == 1 and len(applied.notices) == 1
    assert applied.notices[0][0] == qid
    msgs, rcpts, _ = await _rows(engine)
    assert [m.queue_id for m in msgs] == [applied.notices[0][1]]
    assert applied.log_lines == [(qid, "removed")]
    notice = msgs[0]
    assert notice.sender == "" and [r.address for r in rcpts] == ["alice@x.test"]
    parsed = message_from_bytes(notice.body)
    assert parsed["Subject"] == "Undelivered Mail Returned to Sender"
    assert parsed.get_content_type() == "multipart/report"
    text = notice.body.decode()
    assert "Status: 5.1.1" in text and "Final-Recipient: rfc822; a@y.test" in text
    assert f"X-Postfix-Queue-ID: {qid}" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 <a@y.test>: User unknown" in text
    assert "<a@y.test>: host h[1.2.3.4] said: 550 5.1.1" in text


async def test_a_bounced_notice_is_not_bounced_again(engine: AsyncEngine) -> None:
    await queue_message(engine, ["alice@x.test"], sender="")
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("bounced", "5.1.1", "550 no")])
    applied = await apply_results(engine, [res], POLICY, "mx.test")
    assert applied.bounced == 1 and applied.notices == []
    assert (await _rows(engine))[0] == []


async def test_past_the_queue_lifetime_a_deferral_expires_and_bounces(
        engine: AsyncEngine) -> None:
    old = datetime.now(UTC) - timedelta(days=6)
    await queue_message(engine, ["a@y.test"], arrived=old, lifetime=timedelta(days=5))
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("deferred", "4.4.1", "connect to h[1.2.3.4]:25: refused")])
    applied = await apply_results(engine, [res], POLICY, "mx.test")
    assert applied.expired == 1 and len(applied.notices) == 1
    assert "status=expired" in applied.log_lines[0][1]
    _, _, logs = await _rows(engine)
    assert logs[0].status == "expired"


async def test_a_batch_of_many_results_applies_in_one_go(engine: AsyncEngine) -> None:
    for i in range(5):
        await queue_message(engine, [f"a{i}@y.test", f"b{i}@y.test"])
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 100)
    by_qid: dict[str, list] = {}
    for c in claimed:
        by_qid.setdefault(c.queue_id, []).append(c)
    results = [_result(cs, [("sent", "2.0.0", "250 ok"), ("deferred", "4.2.0", "450 later")])
               for cs in by_qid.values()]
    applied = await apply_results(engine, results, POLICY, "mx.test")
    assert (applied.delivered, applied.deferred) == (5, 5)
    msgs, rcpts, logs = await _rows(engine)
    assert len(msgs) == 5 and len(logs) == 10
    assert sorted(r.status for r in rcpts) == ["deferred"] * 5 + ["delivered"] * 5


async def test_a_hold_result_puts_the_message_on_hold_and_frees_its_recipients(
        engine: AsyncEngine) -> None:
    qid = await queue_message(engine, ["a@y.test"])
    claimed = await claim_due(engine, "q1", datetime.now(UTC), 60, 10)
    res = _result(claimed, [("sent", "2.0.0", "unused")])
    del res.recipients[:]
    res.hold_reason = "message content unreadable (stored content is str, not bytes)"
    applied = await apply_results(engine, [res], POLICY, "mx.test")
    assert applied.held == 1
    assert applied.log_lines == [
        (qid, "hold: message content unreadable (stored content is str, not bytes)")]
    msgs, rcpts, _ = await _rows(engine)
    assert [(m.queue_id, m.state) for m in msgs] == [(qid, "hold")]
    assert [(r.status, r.lease_owner) for r in rcpts] == [("pending", None)]
    # Held: not claimed again until released.
    assert await claim_due(engine, "q2", datetime.now(UTC), 60, 10) == []
