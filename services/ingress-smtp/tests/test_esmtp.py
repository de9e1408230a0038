"""Postfix 3.7's ESMTP extensions over a real socket: the EHLO keywords in
Postfix's order, DSN parameters (RFC 3461), SMTPUTF8 (RFC 6531), BDAT (RFC
3030) with DATA's end-of-data safety, ETRN's replies, and the session
transcripts smtpd mails to the postmaster (notify_classes). The replies are
the ones a private Postfix 3.7 gives (tests/e2e/test_esmtp_dsn.py holds the
two side by side)."""

from __future__ import annotations

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.testing.waiting import eventually
from postfleet.ingress_smtp.transcript import Transcript, error_class, restriction_class

# A client outside mynetworks (no bare <LF> exemption), relaying to d.example.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["d.example"])
POSTFIX_EHLO = ["mx.postfleet.test", "PIPELINING", "SIZE 10240000", "VRFY", "ETRN",
                "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]


async def test_ehlo_lists_postfix_keywords_in_postfix_order(make_ingress, dialogs) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    assert await d.cmd("EHLO client.test") == (250, POSTFIX_EHLO)


async def test_smtputf8_enable_no_takes_smtputf8_away(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"smtputf8_enable": False})
    d = await dialogs(ingress.port())
    assert "SMTPUTF8" not in (await d.cmd("EHLO client.test"))[1]
    assert await d.line("MAIL FROM:<a@b.example> SMTPUTF8") == (
        "555 5.5.4 Unsupported option: SMTPUTF8")


async def test_dsn_parameters_reach_cleanup(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert await d.line("MAIL FROM:<a@b.example> RET=HDRS ENVID=QQ+2B1") == "250 2.1.0 Ok"
    assert await d.line("RCPT TO:<r1@d.example> NOTIFY=success,delay "
                        "ORCPT=rfc822;R1+40d.example") == "250 2.1.5 Ok"
    assert await d.line("RCPT TO:<r2@d.example> NOTIFY=NEVER") == "250 2.1.5 Ok"
    assert await d.line("RCPT TO:<r3@d.example>") == "250 2.1.5 Ok"
    assert (await d.data(b"Subject: dsn\r\n\r\nhi\r\n.\r\n"))[0] == 250
    envelope = cleanup.servicer.submitted[0].envelope
    assert (envelope.ret, envelope.envid) == ("HDRS", "QQ+1")
    assert [(r.address, r.notify, r.orcpt) for r in envelope.recipients] == [
        ("r1@d.example", "SUCCESS,DELAY", "rfc822;R1@d.example"),
        ("r2@d.example", "NEVER", ""),
        ("r3@d.example", "", ""),
    ]


MAIL = "MAIL FROM:<a@b.example>"


@pytest.mark.parametrize(("before", "command", "reply"), [
    ("", f"{MAIL} RET=ALL", "501 5.5.4 Bad RET parameter syntax"),
    ("", f"{MAIL} RET=HDRS RET=FULL", "501 5.5.4 Bad RET parameter syntax"),
    ("", f"{MAIL} ENVID=a+zz", "501 5.5.4 Bad ENVID parameter syntax"),
    ("", f"{MAIL} ENVID=a ENVID=b", "501 5.5.4 Bad ENVID parameter syntax"),
    (MAIL, "RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS",
     "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    (MAIL, "RCPT TO:<c@d.example> NOTIFY=BOGUS", "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    (MAIL, "RCPT TO:<c@d.example> NOTIFY=DELAY NOTIFY=DELAY",
     "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
    (MAIL, "RCPT TO:<c@d.example> ORCPT=bogus", "501 5.5.4 Error: Bad ORCPT parameter syntax"),
    (MAIL, "RCPT TO:<c@d.example> XTRA=1", "555 5.5.4 Unsupported option: XTRA=1"),
])
async def test_bad_dsn_parameters(make_ingress, dialogs, before, command, reply) -> None:
    ingress = await make_ingress(overrides={"smtpd_error_sleep_time": 0})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    if before:
        assert await d.line(before) == "250 2.1.0 Ok"
    assert await d.line(command) == reply


async def test_smtputf8_addresses_are_accepted_and_marked(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert await d.line("MAIL FROM:<j\u00f6rg@b.example> SMTPUTF8") == "250 2.1.0 Ok"
    assert await d.line("RCPT TO:<\u7528\u6237@d.example>") == "250 2.1.5 Ok"
    content = "Subject: gr\u00fc\u00dfe\r\n\r\nhallo\r\n.\r\n".encode()
    assert (await d.data(content))[0] == 250
    envelope = cleanup.servicer.submitted[0].envelope
    assert envelope.sender == "j\u00f6rg@b.example"
    assert [r.address for r in envelope.recipients] == ["\u7528\u6237@d.example"]
    assert envelope.client.protocol == "UTF8SMTP"  # Postfix's Received "with"


# -- BDAT -------------------------------------------------------------------------


async def _bdat(d, size: int, payload: bytes, last: bool = False) -> str:
    await d.send(f"BDAT {size}{' LAST' if last else ''}\r\n".encode() + payload)
    code, lines = await d.reply()
    return f"{code} {lines[-1]}"


async def test_bdat_chunks_make_one_message(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE)
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example> BODY=8BITMIME")
    await d.cmd("RCPT TO:<c@d.example>")
    # What would end DATA is only data here: a lone dot line, and an
    # <LF>.<CR><LF> that a smuggler would hope ends the message.
    first = b"Subject: chunked\r\n\r\nline one\r\n.\r\n"
    second = b"MAIL FROM:<evil@x>\n.\r\nlast line"
    assert await _bdat(d, len(first), first) == f"250 2.0.0 Ok: {len(first)} bytes"
    reply = await _bdat(d, len(second), second, last=True)
    total = len(first) + len(second)
    assert reply.startswith(f"250 2.0.0 Ok: {total} bytes queued as 4Q")
    [got] = cleanup.servicer.submitted
    # One message; the bare <LF> became a line end (normalize), nothing was
    # unstuffed, and the last line was ended.
    assert got.body == (b"Subject: chunked\r\n\r\nline one\r\n.\r\n"
                        b"MAIL FROM:<evil@x>\r\n.\r\nlast line\r\n")
    assert await d.line("NOOP") == "250 2.0.0 Ok"  # in step after the chunks


async def test_bdat_bare_lf_rejected_like_data(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE,
                                 overrides={"smtpd_forbid_bare_newline": "reject"})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    body = b"Subject: x\r\n\r\nbare\n.\r\n"
    assert await _bdat(d, len(body), body, last=True) == "550 5.5.2 Error: bare <LF> received"
    assert await d.closed()
    assert cleanup.servicer.calls == 0


async def test_bdat_errors_as_postfix(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(overrides={"smtpd_error_sleep_time": 0,
                                            "message_size_limit": 100})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert await _bdat(d, 3, b"abc") == "503 5.5.1 Error: need RCPT command"
    # Until LAST or RSET, chunks are read and dropped.
    assert await d.line("MAIL FROM:<a@b.example>") == "503 5.5.1 Error: MAIL after BDAT"
    assert await _bdat(d, 2, b"de", last=True) == (
        "551 5.0.0 Discarded 2 bytes after earlier error")
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    assert await _bdat(d, 0, b"") == "551 5.7.1 Null BDAT request"
    assert await d.line("RSET") == "250 2.0.0 Ok"
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    assert await _bdat(d, 4, b"x\r\n\r") == "250 2.0.0 Ok: 4 bytes"
    assert await d.line("DATA") == "503 5.5.1 Error: DATA after BDAT"
    assert await d.line("RCPT TO:<e@d.example>") == "503 5.5.1 Error: RCPT after BDAT"
    assert await _bdat(d, 120, b"y" * 120) == "552 5.3.4 Chunk exceeds message size limit"
    assert await _bdat(d, 1, b"z", last=True) == (
        "551 5.0.0 Discarded 1 bytes after earlier error")
    assert cleanup.servicer.calls == 0
    # A new transaction after LAST goes through.
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    assert (await _bdat(d, 0, b"", last=True)).startswith("250 2.0.0 Ok: 0 bytes queued as")
    assert await d.line("BDAT x") == "521 5.5.4 Syntax: BDAT count [LAST]"
    assert await d.closed()


# -- ETRN -------------------------------------------------------------------------


async def test_etrn_replies_without_a_flush_service(make_ingress, dialogs) -> None:
    ingress = await make_ingress(snapshot=RoutingSnapshot(relay_domains=["d.example"]),
                                 overrides={"smtpd_error_sleep_time": 0})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert await d.line("ETRN") == "500 Syntax: ETRN domain"
    assert await d.line("ETRN bad_dom!") == "501 Error: invalid parameter syntax"
    assert await d.line("ETRN d.example") == "458 Unable to queue messages"
    await d.cmd("MAIL FROM:<a@b.example>")
    assert await d.line("ETRN d.example") == "503 Error: MAIL transaction in progress"


# -- the postmaster's session transcripts (notify_classes) ------------------------


async def test_policy_and_protocol_errors_send_a_transcript(make_ingress, dialogs,
                                                            cleanup) -> None:
    snapshot = RoutingSnapshot(myhostname="mx.postfleet.test", mynetworks=["10.0.0.0/8"])
    ingress = await make_ingress(snapshot=snapshot, overrides={
        "notify_classes": "policy, protocol", "smtpd_error_sleep_time": 0,
        "error_notice_recipient": "errors"})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("AUTH PLAIN c2VjcmV0")
    await d.cmd("MAIL FROM:<a@b.example>")
    assert (await d.cmd("RCPT TO:<x@y.example>"))[0] == 554
    assert await d.line("QUIT") == "221 2.0.0 Bye"
    await d.closed()
    [notice] = await _eventually_submitted(cleanup)
    envelope = notice.envelope
    assert envelope.sender == "double-bounce@mx.postfleet.test"
    assert [r.address for r in envelope.recipients] == ["errors@mx.postfleet.test"]
    text = notice.body.decode()
    assert "Subject: postfleet SMTP server: errors from unknown[127.0.0.1]" in text
    assert "Transcript of session follows." in text
    assert (" In:  RCPT TO:<x@y.example>\r\n"
            " Out: 554 5.7.1 <x@y.example>: Relay access denied") in text
    assert " In:  AUTH PLAIN\r\n" in text and "c2VjcmV0" not in text  # no credentials


def test_refusals_are_classed_as_postfix_classes_them() -> None:
    kept = Transcript()
    kept.command("MAIL", "FROM a@b.example")
    kept.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
    assert kept.take({"resource", "software"}) is None  # Postfix's default classes
    assert kept.lines == [] and kept.classes == set()
    for line, klass in [("451 4.3.0 Error: queue file write error", "resource"),
                        ("451 4.3.5 Server configuration error", "software"),
                        ("552 5.3.4 Message size exceeds fixed limit", "policy"),
                        ("554 5.7.1 <x@y>: Relay access denied", "policy"),
                        ("502 5.5.2 Error: command not recognized", "protocol")]:
        assert error_class(line) == klass
    assert error_class("421 4.4.2 mx Error: timeout exceeded") is None
    # A restriction's refusal: an unknown address is Postfix's "bounce" class.
    assert [restriction_class(s) for s in ("5.1.1", "4.1.1", "5.1.0", "5.7.1", "4.7.1")] == [
        "bounce", "bounce", "bounce", "policy", "policy"]


async def _eventually_submitted(cleanup) -> list:
    return await eventually(lambda: cleanup.servicer.submitted, timeout=10,
                            what="a submission to cleanup")
