"""The queue store's schema migrates and round-trips on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from postfleet.core.db.engine import create_engine, sessionmaker
from postfleet.core.db.migrate import HEAD, alembic_config, current_revision, upgrade
from postfleet.core.db.models import Message, Recipient, RecipientStatus, utcnow
from postfleet.core.queueid import new_queue_id


async def test_migrations_are_idempotent_and_reach_head(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)  # second run: nothing to do
        async with engine.connect() as conn:
            assert await current_revision(conn) == HEAD
    finally:
        await engine.dispose()


async def test_message_and_recipients_round_trip_with_utc_times(database_url: str) -> None:
    engine = create_engine(database_url)
    now = utcnow()
    qid = new_queue_id()
    try:
        async with sessionmaker(engine)() as session, session.begin():
            session.add(Message(queue_id=qid, sender="a@x.test", size=3, body=b"hi\n",
                                arrived_at=now, expires_at=now + timedelta(days=5)))
            await session.flush()
            session.add(Recipient(queue_id=qid, address="b@y.test", next_attempt_at=now))
        async with sessionmaker(engine)() as session:
            rcpt = (await session.execute(select(Recipient))).scalar_one()
            msg = await session.get(Message, qid)
        assert msg is not None and msg.body == b"hi\n"
        assert rcpt.status == RecipientStatus.PENDING and rcpt.attempts == 0
        assert rcpt.next_attempt_at == now and rcpt.next_attempt_at.tzinfo is not None
    finally:
        await engine.dispose()


def test_queue_ids_sort_by_arrival_and_do_not_collide() -> None:
    ids = [new_queue_id(1_700_000_000 + i / 1000) for i in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert len(ids[0]) == 15 and ids[0].isalnum()


def test_the_head_constant_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD


def test_a_full_disk_is_told_apart_from_other_write_errors() -> None:
    import errno
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from postfleet.core.db.errors import storage_full

    full = OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
    assert storage_full(full)
    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))

    class DiskFull(Exception):  # asyncpg's DiskFullError carries SQLSTATE 53100
        sqlstate = "53100"

    try:
        raise RuntimeError("wrapped") from DiskFull("could not extend file")
    except RuntimeError as exc:
        assert storage_full(exc)
    locked = OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))
    assert not storage_full(locked)
    assert not storage_full(ConnectionRefusedError("connection refused"))


async def test_reschedule_site_makes_one_domains_open_recipients_due(database_url: str) -> None:
    """ETRN and flush --site: the recipients of that domain (any case), open
    ones only; other domains and subdomains wait for their own time."""
    from postfleet.core.db.queue import NewMessage, NewRecipient, enqueue, reschedule_site

    engine = create_engine(database_url)
    now = utcnow()
    later = now + timedelta(hours=1)
    message = NewMessage(
        queue_id=new_queue_id(), sender="a@x.test", body=b"x\r\n", arrived_at=later,
        expires_at=later + timedelta(days=5),
        recipients=[NewRecipient(a) for a in ("u@Site.test", "v@site.test", "w@sub.site.test",
                                              "z@other.test", "y_%@site.test")])
    try:
        async with engine.begin() as conn:
            await enqueue(conn, [message])  # all due in an hour
        assert await reschedule_site(engine, "SITE.test", now) == 3
        async with sessionmaker(engine)() as s:
            due = {r.address for r in (await s.execute(select(Recipient))).scalars()
                   if r.next_attempt_at <= now}
        assert due == {"u@Site.test", "v@site.test", "y_%@site.test"}
        assert await reschedule_site(engine, "%.test", now) == 0  # no wildcard
    finally:
        await engine.dispose()


async def test_a_reader_engine_reads_outside_any_transaction(database_url: str) -> None:
    """Delivery's and the filter's engine (writer=False): no BEGIN, so a job's
    read is one round trip on PostgreSQL and never waits for SQLite's write
    lock -- and a row committed between two reads is seen by the second."""
    writer, reader = create_engine(database_url), create_engine(database_url, writer=False)
    qid = new_queue_id()
    try:
        async with reader.connect() as conn:
            before = (await conn.execute(select(Message.queue_id).where(
                Message.queue_id == qid))).all()
            driver = (await conn.get_raw_connection()).driver_connection
            in_transaction = (driver.in_transaction if conn.dialect.name == "sqlite"
                              else driver.is_in_transaction())
            async with sessionmaker(writer)() as session, session.begin():
                now = utcnow()
                session.add(Message(queue_id=qid, sender="a@x.test", size=1, body=b"x",
                                    arrived_at=now, expires_at=now + timedelta(days=5)))
            after = (await conn.execute(select(Message.queue_id).where(
                Message.queue_id == qid))).all()
    finally:
        await reader.dispose()
        await writer.dispose()
    assert before == [] and not in_transaction
    assert after == [(qid,)]
