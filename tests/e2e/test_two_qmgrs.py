"""Two qmgr processes on one PostgreSQL queue deliver 1000 messages, each
exactly once (FOR UPDATE SKIP LOCKED claims)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster, RoleProcess
from postfleet.core.testing.ports import free_port
from postfleet.core.testing.sink import SmtpSink

from .conftest import delivery_log, eventually, relay_config, send, start

pytestmark = pytest.mark.slow

N = 1000


async def test_two_qmgrs_share_one_queue_and_deliver_each_message_once(
        postgres_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(postgres_url, relay_config(smtp_sink)))
    port = free_port()
    second = RoleProcess("qmgr", {**cluster.role_env("qmgr"), "POSTFLEET_HTTP_PORT": str(port)},
                         cluster.workdir / "qmgr2.log", port)
    await asyncio.to_thread(second.start)
    try:
        sem = asyncio.Semaphore(20)

        async def one(i: int) -> str:
            async with sem:
                return await send(cluster.smtp_port, f"u{i}@example.test", subject=f"m{i}")

        ids = await asyncio.gather(*(one(i) for i in range(N)))
        await smtp_sink.wait_for(N, timeout=120)
        await asyncio.sleep(2)  # let any duplicate show itself
        subjects = Counter(m.message["Subject"] for m in smtp_sink.messages)
        assert len(subjects) == N and set(subjects.values()) == {1}
        log = await eventually(lambda: _sent(postgres_url), what=f"{N} sent rows")
        assert sorted(r.queue_id for r in log) == sorted(ids)
        # Both replicas took part of the work.
        claimed = [_claimed(cluster.roles["qmgr"].http_port), _claimed(second.http_port)]
        assert all(c > 0 for c in claimed) and sum(claimed) >= N, claimed
    finally:
        second.stop()


async def _sent(url: str) -> list:
    rows = [r for r in await delivery_log(url) if r.status == "sent"]
    return rows if len(rows) >= N else []


def _claimed(http_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith("postfleet_qmgr_claimed_total "):
            return float(line.split()[1])
    raise AssertionError("qmgr exposes no postfleet_qmgr_claimed_total")
