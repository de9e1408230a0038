"""Delivery status notifications as Postfix's bounce daemon sends them:
failure notices honouring NOTIFY and RET, success notices ("delivered",
"relayed", none when the next hop took the request on), one delay notice
past delay_warning_time, postmaster copies by notify_classes, and double
bounces that go to the postmaster and never loop. Each notice parses as
RFC 3464 (multipart/report; report-type=delivery-status)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import Message as EmailMessage

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message, Recipient
from postfleet.core.db.queue import NewRecipient, claim_due
from postfleet.core.db.status import Outcome
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.qmgr.bounce import NoticePolicy
from postfleet.qmgr.results import ResultPolicy, apply_results

from .conftest import queue_message

BIG_BODY = b"Subject: big\r\n\r\n" + b"x" * 60000 + b"\r\n"


def policy(**notices: object) -> ResultPolicy:
    return ResultPolicy(300, 4000, 5 * 86400, NoticePolicy(**notices))  # type: ignore[arg-type]


def _result(claimed: list, outcome: str, dsn: str, reply: str, *, passed_on: bool = False,
            final: bool = False) -> delivery_pb2.Result:
    first = claimed[0]
    return delivery_pb2.Result(
        job_id=f"q1/{first.queue_id}/{first.id}/{first.attempt}", queue_id=first.queue_id,
        attempt=first.attempt, transport="smtp", nexthop="[sink.test]:2526",
        relay="sink.test[127.0.0.1]:2526", final_delivery=final,
        recipients=[delivery_pb2.RecipientResult(
            id=c.id, address=c.address, outcome=Outcome(outcome).to_proto(), dsn=dsn,
            reply=reply, dsn_passed_on=passed_on) for c in claimed])


async def _settle(engine: AsyncEngine, qid: str, outcome: str, dsn: str, reply: str,
                  rules: ResultPolicy, when: datetime | None = None,
                  **flags: bool) -> list[tuple[str, str, EmailMessage]]:
    """Claim the message's recipients, apply one result for all of them;
    the notices queued: (sender, recipient, parsed message)."""
    claimed = await claim_due(engine, "q1", when or datetime.now(UTC), 60, 100)
    claimed = [c for c in claimed if c.queue_id == qid]
    applied = await apply_results(engine, [_result(claimed, outcome, dsn, reply, **flags)],
                                  rules, "mx.test")
    ids = [new for orig, new in applied.notices if orig == qid]
    async with engine.connect() as conn:
        msgs = (await conn.execute(select(Message).where(Message.queue_id.in_(ids)))).all()
        rcpts = {r.queue_id: r.address for r in (await conn.execute(
            select(Recipient).where(Recipient.queue_id.in_(ids)))).all()}
    return sorted((m.sender, rcpts[m.queue_id], message_from_bytes(m.body)) for m in msgs)


def _report(notice: EmailMessage) -> tuple[str, list[str], str]:
    """(subject, the delivery-status part's fields, the third part's type) of
    an RFC 3464 report."""
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    text, status, original = notice.get_payload()
    assert text.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    fields = [f"{k}: {v}" for block in status.get_payload() for k, v in block.items()]
    return notice["Subject"], fields, original.get_content_type()


async def test_failure_notice_returns_the_message_and_honours_ret_hdrs(
        engine: AsyncEngine) -> None:
    full = await queue_message(engine, ["a@y.test"], envid="E-1")
    [(sender, to, notice)] = await _settle(engine, full, "bounced", "5.1.1", "550 no", policy())
    subject, fields, returned = _report(notice)
    assert (sender, to, subject) == ("", "alice@x.test", "Undelivered Mail Returned to Sender")
    assert returned == "message/rfc822"  # RET not given: the whole message
    assert "Original-Envelope-Id: E-1" in fields and "Action: failed" in fields
    hdrs = await queue_message(engine, ["a@y.test"], ret="HDRS")
    [(_, _, notice)] = await _settle(engine, hdrs, "bounced", "5.1.1", "550 no", policy())
    assert _report(notice)[2] == "text/rfc822-headers"
    big = await queue_message(engine, ["a@y.test"], body=BIG_BODY)  # over bounce_size_limit
    [(_, _, notice)] = await _settle(engine, big, "bounced", "5.1.1", "550 no", policy())
    assert _report(notice)[2] == "text/rfc822-headers"


async def test_notify_never_and_the_postmaster_copy(engine: AsyncEngine) -> None:
    qid = await queue_message(engine, [
        NewRecipient("never@y.test", notify="NEVER"),
        NewRecipient("asked@y.test", notify="FAILURE", orcpt="rfc822;Asked@Y.test")])
    notices = await _settle(engine, qid, "bounced", "5.1.1", "550 no",
                            policy(notify_classes=frozenset({"bounce"}),
                                   bounce_notice_recipient="pm@admin.test"))
    [(sender, to, notice), (pm_from, pm_to, copy)] = notices
    assert (sender, to) == ("", "alice@x.test")
    fields = _report(notice)[1]
    assert "Final-Recipient: rfc822; asked@y.test" in fields
    assert "Original-Recipient: rfc822;Asked@Y.test" in fields
    assert not any("never@y.test" in f for f in fields)  # NOTIFY=NEVER
    # The postmaster copy: every recipient, headers only, from double-bounce.
    assert (pm_from, pm_to) == ("double-bounce@mx.test", "pm@admin.test")
    subject, fields, returned = _report(copy)
    assert subject == "Postmaster Copy: Undelivered Mail" and returned == "text/rfc822-headers"
    assert "Final-Recipient: rfc822; never@y.test" in fields


async def test_double_bounces_go_to_the_postmaster_and_never_loop(engine: AsyncEngine) -> None:
    rules = policy(notify_classes=frozenset({"2bounce"}),
                   two_bounce_notice_recipient="postmaster")
    bounce = await queue_message(engine, ["alice@x.test"], sender="")
    [(sender, to, notice)] = await _settle(engine, bounce, "bounced", "5.1.1", "550 no", rules)
    assert (sender, to) == ("double-bounce@mx.test", "postmaster@mx.test")
    assert _report(notice)[2] == "message/rfc822"
    # That notice failing too is dropped: no triple bounce.
    copy = await queue_message(engine, ["postmaster@mx.test"], sender="double-bounce@mx.test")
    assert await _settle(engine, copy, "bounced", "5.1.1", "550 no", rules) == []
    # Postfix's default notify_classes drop a failed notice.
    bounce = await queue_message(engine, ["alice@x.test"], sender="")
    assert await _settle(engine, bounce, "bounced", "5.1.1", "550 no", policy()) == []


async def test_success_notices_delivered_relayed_or_passed_on(engine: AsyncEngine) -> None:
    def rcpt() -> list[str | NewRecipient]:
        return [NewRecipient("a@y.test", notify="SUCCESS,FAILURE")]

    relayed = await queue_message(engine, rcpt())
    [(sender, to, notice)] = await _settle(engine, relayed, "sent", "2.0.0", "250 2.0.0 Ok",
                                           policy())
    subject, fields, returned = _report(notice)
    assert (sender, to, subject) == ("", "alice@x.test", "Successful Mail Delivery Report")
    assert "Action: relayed" in fields and returned == "text/rfc822-headers"
    final = await queue_message(engine, rcpt())
    [(_, _, notice)] = await _settle(engine, final, "sent", "2.0.0", "delivered to maildir",
                                     policy(), final=True)
    assert "Action: delivered" in _report(notice)[1]
    passed = await queue_message(engine, rcpt())
    assert await _settle(engine, passed, "sent", "2.0.0", "250 ok", policy(),
                         passed_on=True) == []
    plain = await queue_message(engine, ["b@y.test"])  # NOTIFY not given: no success notice
    assert await _settle(engine, plain, "sent", "2.0.0", "250 ok", policy()) == []


async def test_one_delay_notice_past_delay_warning_time(engine: AsyncEngine) -> None:
    rules = policy(delay_warning_time=3600.0, notify_classes=frozenset({"delay"}),
                   delay_notice_recipient="pm@admin.test")
    now = datetime.now(UTC)
    young = await queue_message(engine, ["a@y.test"], arrived=now - timedelta(minutes=30))
    assert await _settle(engine, young, "deferred", "4.4.1", "connect refused", rules) == []
    qid = await queue_message(engine, [NewRecipient("a@y.test"),
                                       NewRecipient("b@y.test", notify="FAILURE")],
                              arrived=now - timedelta(hours=2))
    # Past delay_warning_time: one notice to the sender (only a@: b@ did not
    # ask for DELAY) and a copy to delay_notice_recipient ...
    notices = await _settle(engine, qid, "deferred", "4.4.1", "connect refused", rules)
    [(sender, to, notice), (pm_from, pm_to, copy)] = notices
    assert pm_from == "double-bounce@mx.test"
    subject, fields, returned = _report(notice)
    assert (sender, to, subject) == ("", "alice@x.test", "Delayed Mail (still being retried)")
    assert "Action: delayed" in fields and any(f.startswith("Will-Retry-Until: ")
                                               for f in fields)
    assert not any("b@y.test" in f for f in fields) and returned == "text/rfc822-headers"
    assert "for more than 1 hour(s)" in notice.get_payload()[0].get_payload()
    assert (pm_to, copy["Subject"]) == ("pm@admin.test", "Postmaster Warning: Delayed Mail")
    # ... and never again.
    again = now + timedelta(hours=3)
    assert await _settle(engine, qid, "deferred", "4.4.1", "connect refused", rules,
                         again) == []
