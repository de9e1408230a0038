"""cleanup dies after committing a message and before answering: smtpd sends
the message again under the same queue id once cleanup is back, and the
client hears 250 once for a message queued and delivered once (invariant 2:
duplicates after a crash stay rare; this closes the commonest window)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import delivery_log, eventually, queue_counts, relay_config, send, start

pytestmark = pytest.mark.slow


async def test_cleanup_killed_between_commit_and_answer_queues_once_and_answers_250(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)),
                          "qmgr", "delivery", "ingress-smtp")
    dying = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("dying_cleanup.py")), "2"],
        env=cluster.role_env("cleanup"), stdout=subprocess.PIPE)
    try:
        assert dying.stdout is not None
        assert await asyncio.to_thread(dying.stdout.readline) == b"READY\n"
        # The first message: smtpd's channel to cleanup is up from now on.
        first = await send(cluster.smtp_port, "bob@example.test", subject="first")
        # The second: committed, and cleanup dies before it answers.
        second = asyncio.create_task(
            send(cluster.smtp_port, "bob@example.test", subject="second"))
        assert await asyncio.to_thread(dying.wait, 30) == -9
        assert not second.done()  # smtpd waits for cleanup to come back
        await asyncio.to_thread(cluster.start, "cleanup")
        qid = await asyncio.wait_for(second, 30)
    finally:
        if dying.poll() is None:
            dying.kill()
    assert qid != first
    await eventually(lambda: len(smtp_sink.messages) == 2, timeout=20)
    assert sorted(m.header("Subject") or "" for m in smtp_sink.messages) == ["first", "second"]

    async def drained() -> bool:
        return await queue_counts(database_url) == {"messages": 0, "recipients": 0}

    await eventually(drained, timeout=20)
    sent = [row for row in await delivery_log(database_url) if row.queue_id == qid]
    assert [row.status for row in sent] == ["sent"]
    assert "sending it again" in cluster.roles["ingress-smtp"].log()
