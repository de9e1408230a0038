"""The SMTP dialogue over a real socket: Postfix's replies, limits and DATA rules."""

from __future__ import annotations

import logging

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot

# A client outside mynetworks (loopback is not in 10/8), relaying only to relay.example.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["relay.example"])


async def test_banner_and_ehlo_advertise_postfix_extensions(make_ingress, dialogs) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    assert d.greeting == (220, ["mx.postfleet.test ESMTP postfleet"])
    code, lines = await d.cmd("EHLO client.test")
    assert code == 250
    assert lines[0] == "mx.postfleet.test"
    for keyword in ("PIPELINING", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"):
        assert keyword in lines[1:]
    assert "HELP" not in lines and not any(x.startswith("AUTH") for x in lines)


async def test_listener_override_changes_size(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"message_size_limit": 4096})
    d = await dialogs(ingress.port())
    assert "SIZE 4096" in (await d.cmd("EHLO client.test"))[1]


async def test_commands_and_postfix_replies(make_ingress, dialogs, cleanup) -> None:
    # Many errors on purpose: do not let smtpd_soft_error_limit slow this test down.
    ingress = await make_ingress(overrides={"smtpd_error_sleep_time": 0})
    d = await dialogs(ingress.port())
    assert await d.line("HELO client.test") == "250 mx.postfleet.test"
    assert await d.line("NOOP") == "250 2.0.0 Ok"
    assert await d.line("RCPT TO:<a@b.example>") == "503 5.5.1 Error: need MAIL command"
    assert await d.line("DATA") == "503 5.5.1 Error: need RCPT command"
    assert await d.line("MAIL FROM:<>") == "250 2.1.0 Ok"  # the null sender
    assert await d.line("MAIL FROM:<a@b.example>") == "503 5.5.1 Error: nested MAIL command"
    assert await d.line("DATA") == "554 5.5.1 Error: no valid recipients"
    assert await d.line("RSET") == "250 2.0.0 Ok"
    assert await d.line("MAIL FROM:<a b@c>") == "501 5.1.7 Bad sender address syntax"
    assert await d.line("MAIL FROM a@b.example") == "501 5.5.4 Syntax: MAIL FROM:<address>"
    assert await d.line("MAIL FROM:<a@b.example> XTRA=1") == (
        "555 5.5.4 Unsupported option: XTRA=1")
    assert await d.line("MAIL FROM:<a@b.example> BODY=8BITMIME SIZE=100") == "250 2.1.0 Ok"
    assert await d.line("RCPT TO:<a@>") == "501 5.1.3 Bad recipient address syntax"
    assert await d.line("RCPT TO:<>") == "501 5.1.3 Bad recipient address syntax"
    assert await d.line("RCPT TO:a@b.example") == "250 2.1.5 Ok"  # brackets optional
    assert await d.line("RCPT TO:<@hop.example:c@d.example>") == "250 2.1.5 Ok"
    assert await d.line("DATA now") == "501 5.5.4 Syntax: DATA"
    assert await d.line("VRFY someone") == "252 2.0.0 someone"
    assert await d.line("EXPN list") == "502 5.5.2 Error: command not recognized"
    assert await d.line("BOGUS") == "502 5.5.2 Error: command not recognized"
    assert await d.line("AUTH PLAIN AGFAYg==") == "503 5.5.1 Error: authentication not enabled"
    assert await d.line("QUIT") == "221 2.0.0 Bye"
    assert await d.closed()
    assert cleanup.servicer.calls == 0


async def test_mail_size_parameter_over_the_limit(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"message_size_limit": 1000})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert await d.line("MAIL FROM:<a@b.example> SIZE=1001") == (
        "552 5.3.4 Message size exceeds fixed limit")
    assert await d.line("MAIL FROM:<a@b.example> SIZE=ten") == "501 5.5.4 Bad message size syntax"
    assert await d.line("MAIL FROM:<a@b.example> SIZE=1000") == "250 2.1.0 Ok"


async def test_oversize_message_is_refused_after_data(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(overrides={"message_size_limit": 1000})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 20 + b".\r\n"
    assert await d.data(big) == (552, ["5.3.4 Message size exceeds fixed limit"])
    assert cleanup.servicer.calls == 0
    # The session goes on: a message that fits is taken.
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<c@d.example>")
    code, lines = await d.data(b"Subject: small\r\n\r\nok\r\n.\r\n")
    assert code == 250 and lines[0].startswith("2.0.0 Ok: queued as ")


async def test_too_many_recipients(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(overrides={"smtpd_recipient_limit": 2})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    assert await d.line("RCPT TO:<r1@d.example>") == "250 2.1.5 Ok"
    assert await d.line("RCPT TO:<r2@d.example>") == "250 2.1.5 Ok"
    assert await d.line("RCPT TO:<r3@d.example>") == "452 4.5.3 Error: too many recipients"
    assert (await d.data(b"Subject: two\r\n\r\nhi\r\n.\r\n"))[0] == 250
    assert [r.address for r in cleanup.servicer.submitted[0].envelope.recipients] == [
        "r1@d.example", "r2@d.example"]


async def test_relay_denied_outside_mynetworks(make_ingress, dialogs, cleanup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="postfleet.maillog")
    ingress = await make_ingress(snapshot=OUTSIDE)
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    assert await d.line("RCPT TO:<x@y.example>") == "554 5.7.1 <x@y.example>: Relay access denied"
    assert await d.line("DATA") == "554 5.5.1 Error: no valid recipients"
    assert cleanup.servicer.calls == 0
    assert any("NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 554 5.7.1 <x@y.example>: "
               "Relay access denied; from=<a@b.example> to=<x@y.example> proto=ESMTP "
               "helo=<client.test>" in r.getMessage() for r in caplog.records)
    # The same client to a relay_domains domain (and its subdomains) is accepted.
    assert await d.line("RSET") == "250 2.0.0 Ok"
    await d.cmd("MAIL FROM:<a@b.example>")
    assert await d.line("RCPT TO:<x@y.example>") == "554 5.7.1 <x@y.example>: Relay access denied"
    assert await d.line("RCPT TO:<u@relay.example>") == "250 2.1.5 Ok"
    assert await d.line("RCPT TO:<u@dept.relay.example>") == "250 2.1.5 Ok"
    assert (await d.data(b"Subject: in\r\n\r\nhi\r\n.\r\n"))[0] == 250
    [got] = cleanup.servicer.submitted
    assert [r.address for r in got.envelope.recipients] == ["u@relay.example",
                                                           "u@dept.relay.example"]


async def test_pipelined_commands(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"
                 b"RCPT TO:<e@f.example>\r\nDATA\r\n")
    assert [await d.reply() for _ in range(4)] == [
        (250, ["2.1.0 Ok"]), (250, ["2.1.5 Ok"]), (250, ["2.1.5 Ok"]),
        (354, ["End data with <CR><LF>.<CR><LF>"])]
    await d.send(b"Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert (await d.reply())[0] == 250
    assert await d.reply() == (221, ["2.0.0 Bye"])


async def _send(d, body: bytes) -> tuple[int, list[str]]:
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    await d.cmd("RCPT TO:<u@relay.example>")
    return await d.data(body)


async def test_bare_lf_is_normalized_and_never_ends_data(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE)
    d = await dialogs(ingress.port())
    # <LF>.<CR><LF> and <CR><LF>.<LF> are content, not end-of-data (SMTP smuggling).
    smuggle = (b"Subject: s\r\n\r\nline one\nline two\r\n"
               b"x\n.\r\nMAIL FROM:<evil@b.example>\r\n"
               b"y\r\n.\nRCPT TO:<victim@relay.example>\r\n"
               b".\r\n")
    assert (await _send(d, smuggle))[0] == 250
    [got] = cleanup.servicer.submitted
    assert got.body == (b"Subject: s\r\n\r\nline one\r\nline two\r\n"
                        b"x\r\n\r\nMAIL FROM:<evil@b.example>\r\n"
                        b"y\r\n\r\nRCPT TO:<victim@relay.example>\r\n")
    assert await d.line("NOOP") == "250 2.0.0 Ok"  # nothing was smuggled in


async def test_bare_lf_reject_mode(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE,
                                 overrides={"smtpd_forbid_bare_newline": "reject"})
    d = await dialogs(ingress.port())
    assert await _send(d, b"Subject: s\r\n\r\nbare\n") == (
        550, ["5.5.2 Error: bare <LF> received"])
    assert await d.closed()
    assert cleanup.servicer.calls == 0


async def test_mynetworks_clients_are_excluded_from_bare_lf_handling(
    make_ingress, dialogs, cleanup
) -> None:
    ingress = await make_ingress(overrides={"smtpd_forbid_bare_newline": "reject"})
    d = await dialogs(ingress.port())
    assert (await _send(d, b"Subject: s\r\n\r\nbare\nlf\r\n.\r\n"))[0] == 250
    assert cleanup.servicer.submitted[0].body == b"Subject: s\r\n\r\nbare\nlf\r\n"


async def test_long_lines_are_accepted_whole(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    long_line = b"." + b"z" * 10000 + b"\r"
    body = b"Subject: long\r\n\r\n" + long_line + b"\r\n..dot\r\n"
    assert (await _send(d, body + b".\r\n"))[0] == 250
    assert cleanup.servicer.submitted[0].body == (
        b"Subject: long\r\n\r\n" + long_line[1:] + b"\r\n.dot\r\n")


async def test_hard_error_limit_disconnects(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={
        "smtpd_hard_error_limit": 3, "smtpd_soft_error_limit": 2,
        "smtpd_error_sleep_time": "0s"})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert (await d.cmd("RCPT TO:<a@b>"))[0] == 503
    assert (await d.cmd("BOGUS"))[0] == 502
    assert (await d.cmd("MAIL FROM:<a b>"))[0] == 501
    assert await d.reply() == (421, ["4.7.0 mx.postfleet.test Error: too many errors"])
    assert await d.closed()


async def test_soft_error_limit_slows_the_client(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={
        "smtpd_soft_error_limit": 1, "smtpd_error_sleep_time": "0.3s"})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("BOGUS")
    await d.send(b"NOOP\r\n")
    with pytest.raises(TimeoutError):  # smtpd_error_sleep_time holds the reply back
        await d.reply(timeout=0.25)
    assert await d.reply() == (250, ["2.0.0 Ok"])


async def test_idle_timeout(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"smtpd_timeout": "0.5s"})
    d = await dialogs(ingress.port())
    assert await d.reply() == (421, ["4.4.2 mx.postfleet.test Error: timeout exceeded"])
    assert await d.closed()


async def test_helo_required_and_starttls_not_offered(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"smtpd_helo_required": True})
    d = await dialogs(ingress.port())
    assert await d.line("MAIL FROM:<a@b.example>") == "503 5.5.1 Error: send HELO/EHLO first"
    assert await d.line("STARTTLS") == "502 5.5.1 Error: command not implemented"
    assert await d.line("EHLO") == "501 5.5.4 Syntax: EHLO hostname"
    assert await d.line("HELO client.test") == "250 mx.postfleet.test"
    assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"


async def test_mail_without_helo_is_allowed_by_default(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress()  # Postfix: smtpd_helo_required = no
    d = await dialogs(ingress.port())
    assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    assert await d.line("RCPT TO:<c@d.example>") == "250 2.1.5 Ok"
    assert (await d.data(b"hi\r\n.\r\n"))[0] == 250
    assert cleanup.servicer.submitted[0].envelope.client.protocol == "SMTP"


async def test_command_line_limits(make_ingress, dialogs) -> None:
    ingress = await make_ingress(overrides={"smtpd_error_sleep_time": 0})
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    # Longer than RFC 5321's 512 but within line_length_limit (2048): accepted.
    local = "l" * 900
    assert await d.line(f"MAIL FROM:<{local}@b.example>") == "250 2.1.0 Ok"
    assert await d.line("NOOP " + "x" * 3000) == "500 5.5.2 Error: command line too long"
    # UTF-8 is read as UTF-8 (Postfix takes an 8-bit address even without
    # SMTPUTF8); bytes that are not UTF-8 are bad syntax.
    assert await d.line("RCPT TO:<caf\u00e9@d.example>") == "250 2.1.5 Ok"
    await d.send(b"RCPT TO:<caf\xe9@d.example>\r\n")
    assert await d.reply() == (501, ["5.1.3 Bad recipient address syntax"])
    assert await d.line("RCPT TO:<c@d.example>") == "250 2.1.5 Ok"
