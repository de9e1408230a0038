"""maillog_file: a real `postfleet run all` writes Postfix's syslog-format
mail log, and Debian's pflogsumm (a real peer, installed by
scripts/install-peers) reads it: its grand totals are what the test sent.

Every role writes the one file (O_APPEND line writes); each line comes from
the program Postfix logs it from: smtpd's connect/client=/NOQUEUE reject/
disconnect, qmgr's from=<…>, size=… and removed, smtp's to=<…> status=…
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import aiosmtplib
import pytest

from postfleet.core.testing.monolith import RunAll
from postfleet.core.testing.sink import SmtpSink

from .conftest import FAST_QMGR, eventually, send

pytestmark = pytest.mark.slow

SYSLOG = re.compile(r"^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d mx postfix/"
                    r"(smtpd|qmgr|smtp|cleanup|bounce)\[\d+\]: ")
REMOVED = re.compile(r"postfix/qmgr\[\d+\]: \w+: removed$", re.MULTILINE)


def _pflogsumm(path: Path) -> dict[str, int]:
    program = shutil.which("pflogsumm")
    assert program, "pflogsumm missing: run scripts/install-peers"
    out = subprocess.run([program, str(path)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    totals = {}
    for name in ("received", "delivered", "deferred", "bounced", "rejected",
                 "bytes received", "senders", "recipients"):
        found = re.search(rf"^\s+(\d+)\s+{name}\b", out, re.M)
        assert found, f"no {name!r} in pflogsumm's report:\n{out}"
        totals[name] = int(found.group(1))
    return totals


async def test_pflogsumm_reads_the_maillog_file_of_a_real_run(
        tmp_path: Path, smtp_sink: SmtpSink) -> None:
    smtp_sink.handler.rcpt_replies.update({
        "later@example.test": "450 4.2.0 <later@example.test>: try again later",
        "gone@example.test": "550 5.1.1 <gone@example.test>: no such user"})
    maillog = tmp_path / "mail.log"
    config = {
        "myhostname": "mx.maillog.test", "maillog_file": str(maillog),
        "qmgr": dict(FAST_QMGR),
        "routing": {"relay_domains": ["example.test"], "mynetworks": ["10.255.255.0/24"],
                    "transport_maps": {"example.test": f"smtp:{smtp_sink.nexthop}"}},
    }
    sent = 0
    async with RunAll(tmp_path, config) as mta:
        # delivered, deferred, bounced (a null sender: no notice comes back)
        sent += len(await _send(mta.port, "alice@sender.test", "bob@example.test"))
        sent += len(await _send(mta.port, "carol@other.test", "later@example.test"))
        sent += len(await _send(mta.port, "", "gone@example.test"))
        # rejected at RCPT (relaying from outside mynetworks)
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=mta.port, timeout=30) as smtp:
            await smtp.mail("alice@sender.test")
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await smtp.rcpt("someone@elsewhere.test")
            assert refused.value.code == 554
        await smtp_sink.wait_for(1)
        text = lambda: maillog.read_text() if maillog.exists() else ""  # noqa: E731
        # qmgr logs "removed" once it has applied a final result, which can
        # come after the status= lines (the result crosses the bus first).
        await eventually(lambda: "status=bounced" in text() and "status=deferred" in text()
                         and REMOVED.search(text()) is not None,
                         what="the bounce, the deferral and a removal logged")
        await mta.stop()

    lines = maillog.read_text().splitlines()
    assert lines and all(SYSLOG.match(line) for line in lines), "\n".join(
        line for line in lines if not SYSLOG.match(line))
    assert not any("postfix/cleanup" in line and "from=<" in line and "size=" in line
                   for line in lines), "the from= line is qmgr's, not cleanup's"
    disconnects = [line for line in lines if "disconnect from" in line]
    assert any(line.endswith("ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
               for line in disconnects), disconnects
    assert any(line.endswith("ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4")
               for line in disconnects), disconnects
    assert any(REMOVED.search(line) for line in lines)
    sizes: dict[str, int] = {}
    for line in lines:
        if m := re.search(r"postfix/qmgr\[\d+\]: (\w+): from=<[^>]*>, size=(\d+), "
                          r"nrcpt=1 \(queue active\)$", line):
            sizes.setdefault(m.group(1), int(m.group(2)))
    assert len(sizes) == 3
    # smtpd's client= comes before qmgr's from= (pflogsumm pairs them in order)
    for qid in sizes:
        client = next(i for i, line in enumerate(lines) if f": {qid}: client=" in line)
        active = next(i for i, line in enumerate(lines) if f": {qid}: from=<" in line)
        assert client < active, qid

    totals = _pflogsumm(maillog)
    assert totals["received"] == 3
    assert totals["delivered"] == 1
    assert totals["deferred"] == 1
    assert totals["bounced"] == 1
    assert totals["rejected"] == 1
    assert totals["senders"] == 3  # alice, carol and <>
    # qmgr's size is the queued message (the client's bytes plus cleanup's
    # Received: header), counted once per message however often it is retried.
    assert totals["bytes received"] == sum(sizes.values())
    assert totals["bytes received"] > sent


async def _send(port: int, sender: str, to: str) -> bytes:
    data = (f"From: <{sender or 'mailer-daemon@sender.test'}>\r\nTo: <{to}>\r\n"
            f"Subject: pflogsumm\r\n\r\nhello\r\n").encode()
    if sender:
        await send(port, to, subject="pflogsumm", sender=sender)
        return data
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as smtp:
        await smtp.sendmail("", [to], data)
    return data
