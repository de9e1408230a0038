"""Faults beyond kill -9, each on a real NATS and a real database (issue 8):
NATS restarted under load, PostgreSQL restarted under load, a full disk
under the SQLite queue, and a message whose stored content cannot be read.
Nothing accepted is lost; duplicates are counted, not hidden."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.load import TAG_HEADER, LoadReport, send_load, tally
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.pgcluster import PgCluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import eventually, queue_counts, relay_config, send, start

pytestmark = pytest.mark.slow

MESSAGES = 300


def _tags(sink: SmtpSink) -> list[str]:
    return [t for m in sink.messages if (t := m.header(TAG_HEADER))]


async def _all_delivered(url: str, sink: SmtpSink, report: LoadReport) -> None:
    """Every accepted message arrives and the queue empties; the count of
    copies beyond the first stays within 1 % (measured, printed)."""
    async def done() -> bool:
        arrived = set(_tags(sink))
        return (all(t in arrived for t in report.accepted)
                and await queue_counts(url) == {"messages": 0, "recipients": 0})

    await eventually(done, timeout=120, what="every accepted message delivered")
    counted = tally(report, _tags(sink))
    print(f"accepted {counted.accepted}/{MESSAGES}, lost {len(counted.lost)}, "
          f"duplicates {counted.duplicates}, retries {report.temp_failures}")
    assert counted.lost == []
    assert counted.duplicates <= MESSAGES // 100, counted


async def test_nats_restarted_under_load_loses_nothing(
        database_url: str, smtp_sink: SmtpSink, nats_server: NatsServer,
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)))
    load = asyncio.create_task(send_load(cluster.smtp_port, MESSAGES, sessions=5, rate=100))
    await asyncio.sleep(1)
    await asyncio.to_thread(nats_server.stop)
    await asyncio.sleep(2)
    await asyncio.to_thread(nats_server.start)  # same port, same JetStream store
    report = await load
    assert len(report.accepted) == MESSAGES and report.gave_up == []
    await _all_delivered(database_url, smtp_sink, report)


async def test_postgres_restarted_under_load_answers_4xx_then_delivers_all(
        own_postgres: PgCluster, smtp_sink: SmtpSink,
        make_cluster: Callable[..., Cluster]) -> None:
    url = own_postgres.url()
    cluster = await start(make_cluster(url, relay_config(smtp_sink)))
    load = asyncio.create_task(send_load(cluster.smtp_port, MESSAGES, sessions=5, rate=100))
    await asyncio.sleep(1)
    await asyncio.to_thread(own_postgres.stop, "fast")
    await asyncio.sleep(2)
    await asyncio.to_thread(own_postgres.start)
    report = await load
    # The outage was felt (clients heard 4xx or lost the connection and
    # retried), and every message was accepted in the end.
    assert report.temp_failures > 0
    assert len(report.accepted) == MESSAGES and report.gave_up == []
    await _all_delivered(url, smtp_sink, report)


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 16 MiB tmpfs: a disk the test can fill (needs root, as the tests run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass  # ENOSPC: full
    return filler


async def test_a_full_disk_answers_452_and_accepts_again_when_space_returns(
        small_disk: Path, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    url = f"sqlite+aiosqlite:///{small_disk / 'queue.db'}"
    cluster = await start(make_cluster(url, relay_config(smtp_sink)))
    await send(cluster.smtp_port, "bob@example.test", subject="before")
    await smtp_sink.wait_for(1)

    filler = await asyncio.to_thread(_fill, small_disk)
    import aiosmtplib

    big = "x" * (2 << 20)  # more than any page left
    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        await send(cluster.smtp_port, "bob@example.test", subject="full", body=big)
    assert (refused.value.code, refused.value.message) == (
        452, "4.3.1 Insufficient system storage")

    filler.unlink()
    await send(cluster.smtp_port, "bob@example.test", subject="after")
    await smtp_sink.wait_for(2)
    assert [m.message["Subject"] for m in smtp_sink.messages] == ["before", "after"]
    await eventually(lambda: _empty(url), what="an empty queue")


async def _empty(url: str) -> bool:
    return await queue_counts(url) == {"messages": 0, "recipients": 0}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_an_unreadable_message_goes_on_hold_and_the_rest_flows(
        database_url: str, smtp_sink: SmtpSink, make_cluster: Callable[..., Cluster]) -> None:
    cluster = await start(make_cluster(database_url, relay_config(smtp_sink)),
                          "cleanup", "qmgr", "ingress-smtp")
    broken = await send(cluster.smtp_port, "bob@example.test", subject="broken")
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:  # SQLite keeps whatever it is given
            await conn.execute(text("UPDATE messages SET body = 'not bytes' "
                                    "WHERE queue_id = :qid"), {"qid": broken})
        await asyncio.to_thread(cluster.start, "delivery")
        await send(cluster.smtp_port, "carol@example.test", subject="fine")
        await smtp_sink.wait_for(1)

        async def held() -> bool:
            async with engine.connect() as conn:
                state = (await conn.execute(select(Message.state).where(
                    Message.queue_id == broken))).scalar_one_or_none()
            return state == "hold"

        await eventually(held, what="the broken message on hold")
    finally:
        await engine.dispose()
    assert [m.message["Subject"] for m in smtp_sink.messages] == ["fine"]
    log = cluster.roles["qmgr"].log()
    assert f"{broken}: hold: message content unreadable (stored content is str" in log
    # Only the held message stays (the other leaves once its result is applied).
    await eventually(lambda: _counts_are(database_url, 1), what="only the held message left")


async def _counts_are(url: str, n: int) -> bool:
    return await queue_counts(url) == {"messages": n, "recipients": n}
