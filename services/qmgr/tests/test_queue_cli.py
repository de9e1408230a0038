"""`postfleet queue` (the real command, a process) against qmgr's admin API
on a queue with a message in each state (incoming, active, deferred, hold):
list as postqueue -p and -j print, flush (all, one id, --site), hold,
release, requeue and delete by queue id, ALL, ALL QUEUE and filters, with
postsuper's summaries."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.models import Message, Recipient
from postfleet.core.db.status import MessageState

from .conftest import DEFER_REASON, fill

pytestmark = pytest.mark.slow

POSTFLEET = str(Path(sys.executable).parent / "postfleet")
INCOMING, ACTIVE, DEFERRED, HOLD = (MessageState.INCOMING, MessageState.ACTIVE,
                                    MessageState.DEFERRED, MessageState.HOLD)


def _queue(api: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([POSTFLEET, "queue", *args, "--api", api], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


async def _run(api: str, *args: str) -> tuple[str, str]:
    done = await asyncio.to_thread(_queue, api, *args)
    return done.stdout, done.stderr


async def _states(engine: AsyncEngine) -> dict[str, str]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(Message.queue_id, Message.state))).all())


async def _due(engine: AsyncEngine, qid: str) -> dict[str, bool]:
    """Which of a message's recipients are due now."""
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Recipient.address, Recipient.next_attempt_at)
                                   .where(Recipient.queue_id == qid))).all()
    now = datetime.now(UTC)
    return {a: (t if t.tzinfo else t.replace(tzinfo=UTC)) <= now for a, t in rows}


async def test_list_prints_postqueue_p_and_j(engine: AsyncEngine, api_url: str) -> None:
    ids = await fill(engine)
    out, _ = await _run(api_url, "list")
    lines = out.splitlines()
    assert lines[0] == ("----Queue ID----- --Size-- ---Arrival Time---- "
                        "--Sender/Recipient------")
    # showq's order: active, incoming, deferred, hold; * active, ! hold
    firsts = [line.split()[0] for line in lines if re.match(r"^\w", line)]
    assert firsts == [ids[ACTIVE] + "*", ids[INCOMING], ids[DEFERRED], ids[HOLD] + "!"]
    held = next(line for line in lines if line.startswith(ids[HOLD]))
    assert re.match(rf"^{ids[HOLD]}!\s+\d+ \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d "
                    r"MAILER-DAEMON$", held), held
    assert f"{' ' * (76 - len(DEFER_REASON))}({DEFER_REASON})" in lines
    assert " " * 47 + "deferred@z.test" in lines
    assert lines[-1] == "-- 0 Kbytes in 4 Requests."

    out, _ = await _run(api_url, "list", "--json")
    objects = [json.loads(line) for line in out.splitlines()]
    assert [o["queue_name"] for o in objects] == ["active", "incoming", "deferred", "hold"]
    deferred = objects[2]
    assert list(deferred) == ["queue_name", "queue_id", "arrival_time", "message_size",
                              "forced_expire", "sender", "recipients"]
    assert deferred["recipients"][0] == {"orig_address": "deferred@y.test",
                                         "address": "deferred@y.test",
                                         "delay_reason": DEFER_REASON}
    assert objects[3]["sender"] == "MAILER-DAEMON" and "delay_reason" not in objects[3][
        "recipients"][0]
    assert isinstance(deferred["arrival_time"], int) and deferred["forced_expire"] is False

    out, _ = await _run(api_url, "list", "--json", "--state", "deferred")
    assert [json.loads(line)["queue_id"] for line in out.splitlines()] == [ids[DEFERRED]]
    out, _ = await _run(api_url, "list", "--json", "--sender", "<>")
    assert [json.loads(line)["queue_id"] for line in out.splitlines()] == [ids[HOLD]]
    out, _ = await _run(api_url, "show", ids[INCOMING])
    assert json.loads(out)["headers"] == "Subject: s"


async def test_flush_all_one_and_a_site(engine: AsyncEngine, api_url: str) -> None:
    ids = await fill(engine)
    await _run(api_url, "flush", "--site", "z.test")
    assert await _due(engine, ids[DEFERRED]) == {"deferred@y.test": False,
                                                "deferred@z.test": True}
    fresh = await fill(engine)
    await _run(api_url, "flush", fresh[DEFERRED])
    assert all((await _due(engine, fresh[DEFERRED])).values())
    assert not all((await _due(engine, ids[DEFERRED])).values())
    await _run(api_url, "flush")
    assert all((await _due(engine, ids[DEFERRED])).values())


async def test_postsuper_actions_by_id_all_queue_and_filter(
        engine: AsyncEngine, api_url: str) -> None:
    ids = await fill(engine)
    _, err = await _run(api_url, "hold", "ALL", "incoming")
    assert err.strip() == "postfleet queue: Placed on hold: 1 message"
    assert (await _states(engine))[ids[INCOMING]] == HOLD

    _, err = await _run(api_url, "release", ids[HOLD])
    assert err.strip() == "postfleet queue: Released from hold: 1 message"
    states = await _states(engine)
    assert states[ids[HOLD]] == DEFERRED and states[ids[INCOMING]] == HOLD
    assert all((await _due(engine, ids[HOLD])).values())

    _, err = await _run(api_url, "requeue", "--sender", "active@x.test")
    assert err.strip() == "postfleet queue: Requeued: 1 message"

    _, err = await _run(api_url, "delete", "ALL", "deferred")
    assert err.strip() == "postfleet queue: Deleted: 2 messages"
    assert set(await _states(engine)) == {ids[INCOMING], ids[ACTIVE]}

    _, err = await _run(api_url, "hold", "--recipient-domain", "Y.TEST")
    assert err.strip() == "postfleet queue: Placed on hold: 1 message"  # the active one
    _, err = await _run(api_url, "release", "ALL")
    assert err.strip() == "postfleet queue: Released from hold: 2 messages"

    _, err = await _run(api_url, "delete", ids[ACTIVE])
    assert err.strip() == "postfleet queue: Deleted: 1 message"
    await _run(api_url, "delete", "ALL")
    out, _ = await _run(api_url, "list")
    assert out.strip() == "Mail queue is empty"


async def test_bad_operands_are_told_not_sent(api_url: str) -> None:
    for args in (["delete"], ["hold", "ALL", "nosuchqueue"], ["delete", "a-b"]):
        done = await asyncio.to_thread(subprocess.run, [POSTFLEET, "queue", *args, "--api",
                                                        api_url],
                                       capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and done.stderr.strip(), args
