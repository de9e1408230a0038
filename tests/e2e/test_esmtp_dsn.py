"""ESMTP parity with Postfix 3.7 and delivery status notifications, end to
end: SMTP clients in (swaks, aiosmtplib, a raw socket for BDAT and ETRN),
every role a real process, real next hops out (Postfix's smtp-sink, which
offers DSN; aiosmtpd sinks, which do not), queue state read from the
database. The notices are parsed as RFC 3464 reports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message as EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from sqlalchemy import select

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Recipient
from postfleet.core.sasl_users import UserTable
from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.dovecot_auth import DovecotAuth
from postfleet.core.testing.pki import TestCa
from postfleet.core.testing.postfix import PostfixSink, PrivatePostfix, ehlo_keywords
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.swaks import swaks

from .conftest import FAST_QMGR, eventually, queue_counts, start

pytestmark = pytest.mark.slow

SENDER = "alice@sender.test"


def _config(dsn_hop: PostfixSink, plain: SmtpSink, senders: SmtpSink,
            admin: SmtpSink | None = None, **qmgr: object) -> dict[str, object]:
    """example.test goes to smtp-sink (DSN offered), plain.test to an
    aiosmtpd sink (no DSN), sender.test to the sender's MX; admin.test is
    the postmaster's. 127.0.0.1 is not in mynetworks: relay rules apply."""
    maps = {"example.test": f"smtp:{dsn_hop.nexthop}", "plain.test": f"smtp:{plain.nexthop}",
            "sender.test": f"smtp:{senders.nexthop}"}
    if admin is not None:
        maps["admin.test"] = f"smtp:{admin.nexthop}"
    return {"myhostname": "mx.postfleet.test", "qmgr": {**FAST_QMGR, **qmgr},
            "routing": {"relay_domains": ["example.test", "plain.test"],
                        "transport_maps": maps, "mynetworks": ["10.255.255.0/24"]}}


async def _send(port: int, rcpts: list[str], *, sender: str = SENDER,
                mail_options: tuple[str, ...] = (), rcpt_options: tuple[str, ...] = (),
                subject: str = "dsn") -> str:
    """One message with aiosmtplib (MAIL and RCPT parameters as given); the
    queue id from the 250 reply."""
    data = f"From: <{sender}>\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
        _, reply = await smtp.sendmail(sender, rcpts, data, mail_options=list(mail_options),
                                       rcpt_options=list(rcpt_options))
    return reply.rsplit(" ", 1)[1]


def _report(data: bytes) -> tuple[str, list[str], str]:
    """(subject, delivery-status fields, returned part's type) of an RFC 3464 report."""
    notice: EmailMessage = message_from_bytes(data)
    assert notice.get_content_type() == "multipart/report"
    assert notice.get_param("report-type") == "delivery-status"
    _text, status, original = notice.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    fields = [f"{k}: {v}" for block in status.get_payload() for k, v in block.items()]
    return notice["Subject"], fields, original.get_content_type()


async def _open_recipients(url: str) -> list[tuple[str, str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(Recipient.address, Recipient.status))).all()
        return [(r.address, r.status) for r in rows]
    finally:
        await engine.dispose()


async def test_ehlo_and_replies_as_postfix_3_7(
        database_url: str, make_cluster: Callable[..., Cluster], smtp_sink: SmtpSink,
        postfix_sink: PostfixSink, private_postfix: Callable[..., PrivatePostfix]) -> None:
    postfix = private_postfix({"myhostname": "mx.postfleet.test",
                               "relay_domains": "example.test, plain.test"})
    cluster = await start(make_cluster(database_url, _config(postfix_sink, smtp_sink,
                                                             smtp_sink)))
    ehlo = {}
    for name, port in (("postfix", postfix.port), ("postfleet", cluster.smtp_port)):
        code, out = await swaks(port, "--quit-after", "EHLO", "--ehlo", "client.test")
        assert code == 0, out
        ehlo[name] = ehlo_keywords(out)
    assert ehlo["postfleet"] == ehlo["postfix"] == [
        "PIPELINING", "SIZE 10240000", "VRFY", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME",
        "DSN", "SMTPUTF8", "CHUNKING"]
    dialog = ["EHLO client.test", "ETRN", "ETRN example.test", "ETRN other.test",
              "MAIL FROM:<a@b.test> RET=FULL ENVID=x+2By", "ETRN example.test",
              "RCPT TO:<u@example.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;u+40example.test",
              "RCPT TO:<v@example.test> NOTIFY=NEVER,SUCCESS",
              "RCPT TO:<v@example.test> ORCPT=bogus", "RSET",
              "MAIL FROM:<a@b.test> RET=HDRS RET=FULL",
              "MAIL FROM:<j\u00f6rg@b.test> SMTPUTF8", "RCPT TO:<\u00fc@example.test>",
              "DATA", "RSET", "BDAT 0", "MAIL FROM:<a@b.test>", "RSET", "QUIT"]
    replies = {name: await _converse(port, dialog)
               for name, port in (("postfix", postfix.port), ("postfleet", cluster.smtp_port))}
    assert replies["postfleet"] == replies["postfix"]


async def test_ehlo_with_starttls_and_auth_as_postfix_3_7(
        database_url: str, make_cluster: Callable[..., Cluster], smtp_sink: SmtpSink,
        postfix_sink: PostfixSink, private_postfix: Callable[..., PrivatePostfix],
        make_dovecot_auth: Callable[..., DovecotAuth], test_ca: TestCa, tmp_path: Path) -> None:
    """STARTTLS where configured and AUTH where enabled (Dovecot's mechanisms
    for both), in Postfix's places; after STARTTLS, no STARTTLS."""
    users = tmp_path / "users"
    UserTable(users).add("alice@sender.test", "secret")
    auth = make_dovecot_auth(users)
    cert, key = test_ca.issue("mx", dns=["mx.postfleet.test"], ips=["127.0.0.1"])
    same = {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(cert),
            "smtpd_tls_key_file": str(key), "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "dovecot", "smtpd_sasl_path": auth.sasl_path}
    postfix = private_postfix({"myhostname": "mx.postfleet.test", **same})
    config = _config(postfix_sink, smtp_sink, smtp_sink)
    config["ingress_smtp"] = dict(same)
    cluster = await start(make_cluster(database_url, config))
    ehlo = {}
    for name, port in (("postfix", postfix.port), ("postfleet", cluster.smtp_port)):
        code, out = await swaks(port, "--quit-after", "EHLO", "--ehlo", "client.test")
        assert code == 0, out
        code, tls = await swaks(port, "--quit-after", "EHLO", "--ehlo", "client.test", "--tls")
        assert code == 0, tls
        ehlo[name] = (ehlo_keywords(out), ehlo_keywords(tls))
    assert ehlo["postfleet"] == ehlo["postfix"]
    plain, under_tls = ehlo["postfix"]
    assert plain == ["PIPELINING", "SIZE 10240000", "VRFY", "ETRN", "STARTTLS",
                     "AUTH PLAIN LOGIN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8",
                     "CHUNKING"]
    assert under_tls == [k for k in plain if k != "STARTTLS"]


async def _converse(port: int, commands: list[str]) -> list[str]:
    """Each command's reply (its last line, codes and text), EHLO's left out;
    a DATA gets an empty message."""
    sends, labels = [], []
    for command in commands:
        sends.append(command.encode() + b"\r\n")
        labels.append(command)
        if command == "DATA":
            sends.append(b".\r\n")
            labels.append("(end)")
    replies = await _exchange(port, sends)
    return [f"{label} -> {_no_id(reply)}" for label, reply in zip(labels, replies, strict=True)
            if not label.startswith("EHLO")]


def _no_id(reply: str) -> str:
    """The queue id after "queued as" differs by nature."""
    return reply.split(" queued as ")[0]


async def _reply(reader: asyncio.StreamReader) -> str:
    """The last line of one reply."""
    while True:
        line = (await asyncio.wait_for(reader.readline(), 30)).decode().rstrip("\r\n")
        if line[3:4] != "-":
            return line


async def test_dsn_passed_on_or_reported_as_relayed(
        database_url: str, make_cluster: Callable[..., Cluster], postfix_sink: PostfixSink
) -> None:
    with SmtpSink() as plain, SmtpSink() as senders:
        cluster = await start(make_cluster(database_url, _config(postfix_sink, plain,
                                                                 senders)))
        qid = await _send(cluster.smtp_port, ["a@example.test", "b@plain.test"],
                          mail_options=("RET=HDRS", "ENVID=env+2B1"),
                          rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
        [dump] = await eventually(postfix_sink.received, what="smtp-sink's copy")
        await plain.wait_for(1)
        [notice] = await senders.wait_for(1)
    # smtp-sink offered DSN: the request went on with the message.
    assert dump.mail_args.endswith("ENVID=env+2B1 RET=HDRS")
    # ORCPT added from the original recipient, as Postfix does (xtext: an "@"
    # needs no escape).
    assert dump.rcpt_args == ["<a@example.test> ORCPT=rfc822;a@example.test "
                              "NOTIFY=SUCCESS,FAILURE"]
    # The aiosmtpd sink did not: a "relayed" notice for b@ only, from <>.
    assert notice.sender == "<>" and notice.recipients == [SENDER]
    subject, fields, returned = _report(notice.data)
    assert subject == "Successful Mail Delivery Report"
    assert "Action: relayed" in fields and "Final-Recipient: rfc822; b@plain.test" in fields
    assert "Original-Envelope-Id: env+1" in fields and f"X-Postfix-Queue-ID: {qid}" in fields
    assert not any("a@example.test" in f for f in fields)
    assert returned == "text/rfc822-headers"
    await eventually(lambda: _empty(database_url), what="an empty queue")


async def _empty(url: str) -> bool:
    return (await queue_counts(url)) == {"messages": 0, "recipients": 0}


async def test_notices_shaped_as_postfix_3_7s(
        database_url: str, make_cluster: Callable[..., Cluster], postfix_sink: PostfixSink,
        private_postfix: Callable[..., PrivatePostfix]) -> None:
    """The same messages through both: one the next hop refuses, one it takes
    with NOTIFY=SUCCESS (it offers no DSN: "relayed"), one it keeps deferring
    past delay_warning_time. The same notices, field by field, but for what
    is each server's own (ids, dates)."""
    with SmtpSink() as plain, SmtpSink() as senders:
        plain.handler.rcpt_replies.update({
            "gone@plain.test": "550 5.1.1 <gone@plain.test>: Recipient address rejected: "
                               "User unknown",
            "slow@plain.test": "450 4.2.0 <slow@plain.test>: try later"})
        timers = {"delay_warning_time": "1s", "minimal_backoff_time": "1s",
                  "maximal_backoff_time": "2s", "queue_run_delay": "1s"}
        postfix = private_postfix({
            "myhostname": "mx.postfleet.test", "relay_domains": "plain.test",
            "transport_maps": f"inline:{{plain.test=smtp:{plain.nexthop},"
                              f"sender.test=smtp:{senders.nexthop}}}", **timers})
        config = _config(postfix_sink, plain, senders, **timers)
        cluster = await start(make_cluster(database_url, config))
        for port in (postfix.port, cluster.smtp_port):
            await _send(port, ["gone@plain.test"], mail_options=("RET=HDRS", "ENVID=E+2B1"),
                        rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;Gone+40plain.test"))
            await _send(port, ["ok@plain.test"], rcpt_options=("NOTIFY=SUCCESS",))
            await _send(port, ["slow@plain.test"])
        notices = await senders.wait_for(6, timeout=90)
    theirs = sorted(_shape(m.data) for m in notices if b"(Postfix)" in m.data)
    ours = sorted(_shape(m.data) for m in notices if b"(Postfix)" not in m.data)
    assert [n[0] for n in ours] == ["Delayed Mail (still being retried)",
                                    "Successful Mail Delivery Report",
                                    "Undelivered Mail Returned to Sender"]
    assert ours == theirs


def _shape(data: bytes) -> tuple[object, ...]:
    """A report with what differs by nature (ids, dates, boundaries) left out."""
    subject, fields, returned = _report(data)
    mine = ("X-Postfix-Queue-ID", "Arrival-Date", "Reporting-MTA", "Will-Retry-Until")
    kept = [f for f in fields if not f.startswith(mine)]
    notice = message_from_bytes(data)
    text = notice.get_payload()[0].get_payload().replace("\r\n", "\n")
    return (subject, notice["From"], notice["Auto-Submitted"], text, kept, returned)


async def test_failure_delay_and_double_bounce_notices(
        database_url: str, make_cluster: Callable[..., Cluster], postfix_sink: PostfixSink
) -> None:
    with SmtpSink() as plain, SmtpSink() as senders, SmtpSink() as admin:
        plain.handler.rcpt_replies.update({
            "gone@plain.test": "550 5.1.1 <gone@plain.test>: User unknown",
            "quiet@plain.test": "550 5.1.1 <quiet@plain.test>: User unknown",
            "slow@plain.test": "450 4.2.0 <slow@plain.test>: try later",
            "nobody@plain.test": "550 5.1.1 <nobody@plain.test>: User unknown"})
        config = _config(postfix_sink, plain, senders, admin, delay_warning_time="1s",
                         notify_classes="2bounce, delay",
                         delay_notice_recipient="postmaster@admin.test",
                         **{"2bounce_notice_recipient": "postmaster@admin.test"})
        cluster = await start(make_cluster(database_url, config))
        failed = await _send(cluster.smtp_port, ["gone@plain.test"], mail_options=("RET=HDRS",))
        await _send(cluster.smtp_port, ["quiet@plain.test"], rcpt_options=("NOTIFY=NEVER",))
        delayed = await _send(cluster.smtp_port, ["slow@plain.test"])
        # A notice that cannot be delivered: a bounce from <> to a user the
        # next hop does not know.
        double = await _send(cluster.smtp_port, ["nobody@plain.test"], sender="")
        to_sender = await senders.wait_for(2, timeout=60)
        to_admin = await admin.wait_for(2, timeout=60)
    by_subject = {_report(m.data)[0]: m for m in to_sender}
    assert set(by_subject) == {"Undelivered Mail Returned to Sender",
                               "Delayed Mail (still being retried)"}
    failure = _report(by_subject["Undelivered Mail Returned to Sender"].data)
    assert f"X-Postfix-Queue-ID: {failed}" in failure[1] and "Action: failed" in failure[1]
    assert failure[2] == "text/rfc822-headers"  # RET=HDRS
    assert not any("quiet@plain.test" in m.data.decode() for m in to_sender)  # NOTIFY=NEVER
    delay = _report(by_subject["Delayed Mail (still being retried)"].data)
    assert f"X-Postfix-Queue-ID: {delayed}" in delay[1] and "Action: delayed" in delay[1]
    admin_subjects = sorted(_report(m.data)[0] for m in to_admin)
    assert admin_subjects == ["Postmaster Copy: Undelivered Mail",
                              "Postmaster Warning: Delayed Mail"]
    copy = next(m for m in to_admin if "Undelivered" in _report(m.data)[0])
    assert copy.sender == "double-bounce@mx.postfleet.test"
    assert f"X-Postfix-Queue-ID: {double}" in copy.data.decode()
    # Only the deferred recipient is left in the queue; nothing loops.
    await eventually(lambda: _only_slow_left(database_url), what="only slow@ queued")


async def _only_slow_left(url: str) -> bool:
    rows = await _open_recipients(url)
    return bool(rows) and {a for a, _s in rows} == {"slow@plain.test"}


async def test_smtputf8_passed_on_or_bounced_with_postfix_reply(
        database_url: str, make_cluster: Callable[..., Cluster], postfix_sink: PostfixSink
) -> None:
    with SmtpSink(smtputf8=True) as plain, SmtpSink() as senders:
        cluster = await start(make_cluster(database_url, _config(postfix_sink, plain,
                                                                 senders)))
        await _send(cluster.smtp_port, ["\u00fcser@plain.test"], mail_options=("SMTPUTF8",))
        [received] = await plain.wait_for(1)
        # smtp-sink offers no SMTPUTF8: the message bounces 5.6.7.
        await _send(cluster.smtp_port, ["\u00fcser@example.test"], mail_options=("SMTPUTF8",))
        [notice] = await senders.wait_for(1)
    assert received.recipients == ["\u00fcser@plain.test"]
    assert "SMTPUTF8" in received.mail_options
    assert b"with UTF8SMTP id" in received.data  # Received: as Postfix writes it
    _subject, fields, _ = _report(notice.data)
    assert "Status: 5.6.7" in fields
    assert "SMTPUTF8 is required, but was not offered by host" in notice.data.decode()
    assert postfix_sink.received() == []


async def test_bdat_and_etrn_through_the_fleet(
        database_url: str, make_cluster: Callable[..., Cluster], postfix_sink: PostfixSink
) -> None:
    with SmtpSink() as plain, SmtpSink() as senders:
        plain.handler.rcpt_replies["later@plain.test"] = "450 4.2.0 <later@plain.test>: busy"
        # Retries far apart: only ETRN brings the deferred mail back soon.
        config = _config(postfix_sink, plain, senders, minimal_backoff_time="1h",
                         maximal_backoff_time="2h", queue_run_delay="1h")
        cluster = await start(make_cluster(database_url, config))
        body = b"Subject: bdat\r\n\r\n.\r\nnot the end\r\n"
        replies = await _exchange(cluster.smtp_port, [
            b"EHLO client.test\r\n", b"MAIL FROM:<alice@sender.test>\r\n",
            b"RCPT TO:<a@example.test>\r\n",
            b"BDAT %d LAST\r\n" % len(body) + body, b"QUIT\r\n"])
        assert replies[3].startswith(f"250 2.0.0 Ok: {len(body)} bytes queued as ")
        [dump] = await eventually(postfix_sink.received, what="smtp-sink's copy")
        assert b"\n\n.\nnot the end\n" in dump.data  # one message, the dot line kept
        await _send(cluster.smtp_port, ["later@plain.test"])
        await eventually(lambda: _deferred(database_url), what="a deferral")
        plain.handler.rcpt_replies.clear()
        etrn = await _converse(cluster.smtp_port, ["EHLO client.test", "ETRN other.test",
                                                   "ETRN plain.test"])
        assert etrn == ["ETRN other.test -> 459 <other.test>: service unavailable",
                        "ETRN plain.test -> 250 Queuing started"]
        await plain.wait_for(1, timeout=60)


async def _deferred(url: str) -> bool:
    return ("later@plain.test", "deferred") in await _open_recipients(url)


async def _exchange(port: int, sends: list[bytes]) -> list[str]:
    """Send each piece as it is; the reply to each (its last line)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        await _reply(reader)  # the banner
        for data in sends:
            writer.write(data)
            await writer.drain()
            out.append(await _reply(reader))
    finally:
        writer.close()
    return out
