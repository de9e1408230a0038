"""`postfleet sendmail` (sendmail(1)): its options, reading standard input,
-t's recipients, exit codes; and a real submission through cleanup."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from postfleet.cli.sendmail import (
    EX_TEMPFAIL,
    EX_USAGE,
    Usage,
    extract_recipients,
    parse_args,
    read_message,
    sendmail,
)
from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message, Recipient
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.ports import free_port

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def test_options_as_sendmail_takes_them() -> None:
    opts = parse_args(["-oi", "-fbob@example.org", "-G", "-F", "Bob", "--", "a@x.test", "-b"])
    assert (opts["sender"], opts["dots"], opts["recipients"]) == (
        "bob@example.org", False, ["a@x.test", "-b"])
    opts = parse_args(["-t", "-i", "-N", "never", "-f", "", "c@x.test"])
    assert opts["extract"] and opts["sender"] == "" and opts["notify"] == "never"
    with pytest.raises(Usage, match="requires an argument"):
        parse_args(["-f"])
    with pytest.raises(Usage, match="unsupported mode -bv"):
        parse_args(["-bv", "a@x.test"])


def test_input_ends_at_a_lone_dot_unless_i_and_lines_end_crlf() -> None:
    text = b"Subject: x\n\nline\n.\nafter\n"
    assert read_message(io.BytesIO(text), dots=True) == b"Subject: x\r\n\r\nline\r\n"
    assert read_message(io.BytesIO(text), dots=False).endswith(b".\r\nafter\r\n")


def test_t_takes_to_cc_bcc_and_drops_bcc() -> None:
    message = (b"From: a@x.test\r\nTo: One <one@x.test>, two@x.test\r\n"
               b"Cc: three@x.test\r\nBcc: secret@x.test,\r\n hidden@x.test\r\n"
               b"Subject: s\r\n\r\nBcc: not a header\r\n")
    recipients, kept = extract_recipients(message)
    assert recipients == ["one@x.test", "two@x.test", "three@x.test", "secret@x.test",
                          "hidden@x.test"]
    assert b"secret" not in kept and kept.endswith(b"Subject: s\r\n\r\nBcc: not a header\r\n")
    resent = b"To: old@x.test\r\nResent-To: new@x.test\r\n\r\nbody\r\n"
    assert extract_recipients(resent)[0] == ["new@x.test"]


def test_exit_codes_without_recipients_or_cleanup(tmp_path: Path, monkeypatch,
                                                  capsys) -> None:
    monkeypatch.setenv("POSTFLEET_CLEANUP_ADDRESS", f"127.0.0.1:{free_port()}")
    assert sendmail([], io.BytesIO(b"x\n"), {}, tmp_path) == EX_USAGE
    assert "no recipients specified" in capsys.readouterr().err
    assert sendmail(["a@x.test"], io.BytesIO(b"x\n"), {}, tmp_path) == EX_TEMPFAIL
    assert "unavailable" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_submission_is_queued_by_cleanup(
        postgres_url: str, make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(postgres_url, {"pickup": {"content_filter": "filter:"}})
    await asyncio.to_thread(cluster.start, "cleanup")
    env = {**cluster.role_env("cleanup")}
    done = await asyncio.to_thread(
        subprocess.run, [POSTFLEET, "sendmail", "-t", "-f", "app@pod.test"],
        input=b"To: one@x.test\nBcc: two@x.test\nSubject: from a pod\n\nhello\n.\n",
        env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            (msg,) = (await conn.execute(select(Message))).all()
            rcpts = (await conn.execute(select(Recipient.address))).scalars().all()
    finally:
        await engine.dispose()
    assert msg.sender == "app@pod.test" and sorted(rcpts) == ["one@x.test", "two@x.test"]
    assert msg.content_filter == "filter:"  # pickup's content_filter
    assert b"Bcc" not in msg.body and b"Subject: from a pod\r\n" in msg.body
    assert msg.body.endswith(b"\r\n\r\nhello\r\n")
