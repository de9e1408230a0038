"""A job speaks only for the recipients still open at its attempt (a job a
dead qmgr left on the bus never delivers twice), and a message whose content
cannot be read goes on hold through its result instead of being retried."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Recipient
from postfleet.core.db.status import Outcome
from postfleet.core.testing.sink import SmtpSink

from .conftest import Bus, StartAgent, make_job, queue_message

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _claim_again(engine: AsyncEngine, ids: list[int]) -> None:
    """What another qmgr's claim after a takeover does: a newer attempt."""
    async with engine.begin() as conn:
        await conn.execute(update(Recipient).where(Recipient.id.in_(ids))
                           .values(attempts=Recipient.attempts + 1))


async def test_a_superseded_job_delivers_nothing_and_frees_its_slot(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    queued = await queue_message(engine, ["bob@dest.test"])
    stale = make_job(queued, smtp_sink.nexthop, attempt=1)
    await _claim_again(engine, [queued.recipients[0][0]])
    await bus.publish_job(stale)
    (result,) = await bus.results(1)
    assert result.job_id == stale.job_id and list(result.recipients) == []
    assert not result.hold_reason
    assert smtp_sink.messages == []
    await bus.publish_job(make_job(queued, smtp_sink.nexthop, attempt=2))
    current = (await bus.results(2))[1]
    assert [Outcome.from_proto(r.outcome) for r in current.recipients] == ["sent"]
    assert len(smtp_sink.messages) == 1


async def test_a_job_narrows_to_the_recipients_it_still_speaks_for(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    queued = await queue_message(engine, ["a@dest.test", "b@dest.test"])
    async with engine.begin() as conn:  # a@ was delivered by an earlier result
        await conn.execute(update(Recipient).where(Recipient.id == queued.recipients[0][0])
                           .values(status="delivered"))
    await bus.publish_job(make_job(queued, smtp_sink.nexthop))
    (result,) = await bus.results(1)
    assert [r.address for r in result.recipients] == ["b@dest.test"]
    assert smtp_sink.messages[0].recipients == ["b@dest.test"]


@sqlite_only
async def test_unreadable_content_is_reported_for_hold(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, smtp_sink: SmtpSink
) -> None:
    await start_agent()
    broken = await queue_message(engine, ["bob@dest.test"])
    fine = await queue_message(engine, ["carol@dest.test"])
    async with engine.begin() as conn:  # SQLite keeps whatever it is given
        await conn.execute(text("UPDATE messages SET body = 'not bytes at all' "
                                "WHERE queue_id = :qid"), {"qid": broken.queue_id})
    await bus.publish_job(make_job(broken, smtp_sink.nexthop))
    await bus.publish_job(make_job(fine, smtp_sink.nexthop))
    results = {r.queue_id: r for r in await bus.results(2)}
    held = results[broken.queue_id]
    assert list(held.recipients) == [] and "not bytes" in held.hold_reason
    assert [Outcome.from_proto(r.outcome) for r in results[fine.queue_id].recipients] == [
        "sent"]
    assert [m.recipients for m in smtp_sink.messages] == [["carol@dest.test"]]
