"""STARTTLS and wrapper mode (smtps) against a CA made by the tests: real
clients (smtplib, swaks, asyncio streams) that verify the chain; the Received
protocol (ESMTPS) reaching cleanup; smtpd_tls_security_level = encrypt on one
listener only; protocol ranges; failed handshakes; certificate rotation."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import smtplib
import ssl
from pathlib import Path

import pytest

from postfleet.core.testing.swaks import swaks
from postfleet.core.testing.waiting import eventually
from postfleet.ingress_smtp import tls
from postfleet.ingress_smtp.settings import Listener

BODY = b"Subject: tls\r\n\r\nunder TLS\r\n.\r\n"


def tls_values(pki, **more) -> dict:
    return {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(pki.cert_file),
            "smtpd_tls_key_file": str(pki.key_file), **more}


def listener(name: str, **overrides) -> Listener:
    return Listener(name=name, address="127.0.0.1", port=0, overrides=overrides)


async def closed_silently(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """The server closed the connection without sending a byte."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionError:
        return True


# -- STARTTLS with real clients -------------------------------------------------------
def _smtplib_starttls(port: int, context: ssl.SSLContext) -> tuple[set, set, str]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        before = set(smtp.esmtp_features)
        smtp.starttls(context=context)  # checks the chain and 127.0.0.1 against the cert
        smtp.ehlo()
        after = set(smtp.esmtp_features)
        version = str(smtp.sock.version())  # type: ignore[attr-defined]
        smtp.sendmail("a@b.example", ["c@d.example"], b"Subject: s\r\n\r\nsmtplib over TLS\r\n")
    return before, after, version


async def test_starttls_with_smtplib_verifying_the_chain(make_ingress, cleanup, pki) -> None:
    ingress = await make_ingress(**tls_values(pki))
    before, after, version = await asyncio.to_thread(
        _smtplib_starttls, ingress.port(), pki.client_context())
    assert "starttls" in before and "starttls" not in after
    assert version == "TLSv1.3"
    [got] = cleanup.servicer.submitted
    # cleanup writes "with ESMTPS" into Received: from this.
    assert got.envelope.client.protocol == "ESMTPS"
    assert got.envelope.client.helo == "client.test"
    assert b"smtplib over TLS" in got.body


async def test_a_client_that_does_not_trust_the_ca_refuses(make_ingress, cleanup, pki) -> None:
    ingress = await make_ingress(**tls_values(pki))
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(
            _smtplib_starttls, ingress.port(), ssl.create_default_context())
    await eventually(lambda: len(ingress.listeners.sessions) == 0)
    assert cleanup.servicer.calls == 0


@pytest.mark.slow
async def test_swaks_starttls_verifying_the_chain(make_ingress, cleanup, pki) -> None:
    ingress = await make_ingress(**tls_values(pki))
    code, out = await swaks(
        ingress.port(), "--tls", "--tls-verify", "--tls-ca-path", str(pki.ca_file),
        "--helo", "swaks.test",
        "--from", "a@b.example", "--to", "c@d.example", "--body", "swaks over TLS")
    assert code == 0, out
    assert "220 2.0.0 Ready to start TLS" in out
    assert "TLS started with cipher" in out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    [got] = cleanup.servicer.submitted
    assert got.envelope.client.protocol == "ESMTPS"


async def test_starttls_dialogue(make_ingress, dialogs, cleanup, pki, smtp_transaction) -> None:
    ingress = await make_ingress(**tls_values(pki))
    d = await dialogs(ingress.port())
    code, lines = await d.cmd("EHLO client.test")
    assert lines == ["mx.postfleet.test", "PIPELINING", "SIZE 10240000", "VRFY", "ETRN",
                     "STARTTLS", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8",
                     "CHUNKING"]
    assert await d.line("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS"
    assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    # Plaintext pipelined behind STARTTLS is thrown away, never run under TLS
    # (CVE-2011-0411): the first reply after the handshake is the EHLO's.
    await d.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
    assert await d.reply() == (220, ["2.0.0 Ready to start TLS"])
    await d.start_tls(pki.client_context())
    assert d.tls_version == "TLSv1.3"
    code, lines = await d.cmd("EHLO client.test")
    assert code == 250 and lines[0] == "mx.postfleet.test" and "STARTTLS" not in lines
    # RFC 3207 4.2: the transaction begun before STARTTLS is forgotten.
    assert await d.line("RCPT TO:<c@d.example>") == "503 5.5.1 Error: need MAIL command"
    assert await d.line("STARTTLS") == "554 5.5.1 Error: TLS already active"
    assert await smtp_transaction(d, "a@b.example", ["c@d.example"], BODY) == (
        "250 2.0.0 Ok: queued as 4Q0001")
    [got] = cleanup.servicer.submitted
    assert got.envelope.sender == "a@b.example"
    assert got.envelope.client.protocol == "ESMTPS"


async def test_no_tls_unless_a_level_asks_for_it(make_ingress, dialogs, pki) -> None:
    # Postfix: an empty smtpd_tls_security_level is "none", certificate or not.
    ingress = await make_ingress(smtpd_tls_cert_file=str(pki.cert_file),
                                 smtpd_tls_key_file=str(pki.key_file))
    d = await dialogs(ingress.port())
    assert "STARTTLS" not in (await d.cmd("EHLO client.test"))[1]
    assert await d.line("STARTTLS") == "502 5.5.1 Error: command not implemented"
    assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"


# -- smtpd_tls_security_level = encrypt on one listener (master.cf -o) ---------------------
async def test_encrypt_on_the_submission_listener_only(
    make_ingress, dialogs, cleanup, pki, smtp_transaction
) -> None:
    ingress = await make_ingress(
        listeners=[listener("smtp"),
                   listener("submission", smtpd_tls_security_level="encrypt")],
        smtpd_error_sleep_time=0, **tls_values(pki))
    plain = await dialogs(ingress.port("smtp"))
    await plain.cmd("EHLO client.test")
    assert await plain.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"

    sub = await dialogs(ingress.port("submission"))
    assert "STARTTLS" in (await sub.cmd("EHLO client.test"))[1]
    must = "530 5.7.0 Must issue a STARTTLS command first"
    for command in ("MAIL FROM:<a@b.example>", "RCPT TO:<c@d.example>", "DATA", "RSET",
                    "VRFY someone"):
        assert await sub.line(command) == must, command
    # What Postfix allows before TLS (SMTPD_CMD_FLAG_PRE_TLS).
    assert await sub.line("NOOP") == "250 2.0.0 Ok"
    assert await sub.line("HELO client.test") == "250 mx.postfleet.test"
    assert await sub.line("BOGUS") == "502 5.5.2 Error: command not recognized"
    assert await sub.line("STARTTLS") == "220 2.0.0 Ready to start TLS"
    await sub.start_tls(pki.client_context())
    assert await smtp_transaction(sub, "a@b.example", ["c@d.example"], BODY) == (
        "250 2.0.0 Ok: queued as 4Q0001")
    assert cleanup.servicer.submitted[0].envelope.client.protocol == "ESMTPS"


async def test_mandatory_protocols_apply_where_tls_is_required(make_ingress, dialogs, pki):
    ingress = await make_ingress(
        listeners=[listener("smtp"),
                   listener("submission", smtpd_tls_security_level="encrypt")],
        smtpd_tls_protocols=">=TLSv1.2", smtpd_tls_mandatory_protocols="TLSv1.3",
        **tls_values(pki))
    tls12 = {"maximum_version": ssl.TLSVersion.TLSv1_2}
    d = await dialogs(ingress.port("smtp"))
    await d.cmd("EHLO client.test")
    await d.cmd("STARTTLS")
    await d.start_tls(pki.client_context(**tls12))
    assert d.tls_version == "TLSv1.2"

    sub = await dialogs(ingress.port("submission"))
    await sub.cmd("EHLO client.test")
    await sub.cmd("STARTTLS")
    with pytest.raises(OSError):  # the server's protocol_version alert, or the reset
        await sub.start_tls(pki.client_context(**tls12))
    await eventually(lambda: len(ingress.listeners.sessions) == 1)  # only the smtp one


# -- wrapper mode (smtps) ------------------------------------------------------------------
@pytest.mark.slow
async def test_wrappermode_listener(make_ingress, dialogs, cleanup, pki, smtp_transaction):
    ingress = await make_ingress(
        listeners=[listener("smtp"), listener("smtps", smtpd_tls_wrappermode=True)],
        **tls_values(pki))
    code, out = await swaks(
        ingress.port("smtps"), "--tlsc", "--tls-verify", "--tls-ca-path", str(pki.ca_file),
        "--from", "a@b.example", "--to", "c@d.example", "--body", "swaks on smtps")
    assert code == 0, out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    assert cleanup.servicer.submitted[0].envelope.client.protocol == "ESMTPS"

    d = await dialogs(ingress.port("smtps"), tls=pki.client_context())
    assert d.greeting == (220, ["mx.postfleet.test ESMTP postfleet"])
    assert d.tls_version == "TLSv1.3"
    assert "STARTTLS" not in (await d.cmd("EHLO client.test"))[1]
    assert await d.line("STARTTLS") == "554 5.5.1 Error: TLS already active"
    assert (await smtp_transaction(d, "a@b.example", ["c@d.example"], BODY)).startswith("250")
    assert cleanup.servicer.submitted[1].envelope.client.protocol == "ESMTPS"

    # The plain listener next to it still offers STARTTLS.
    plain = await dialogs(ingress.port("smtp"))
    assert "STARTTLS" in (await plain.cmd("EHLO client.test"))[1]


async def test_wrappermode_says_nothing_in_plaintext(make_ingress, pki) -> None:
    ingress = await make_ingress(overrides={"smtpd_tls_wrappermode": True}, **tls_values(pki))
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port())
    try:
        writer.write(b"EHLO plaintext.test\r\n")
        assert await closed_silently(reader)
    finally:
        writer.close()
    await eventually(lambda: len(ingress.listeners.sessions) == 0)


async def test_wrappermode_clients_that_hang_up_leave_nothing_behind(make_ingress, pki):
    ingress = await make_ingress(overrides={"smtpd_tls_wrappermode": True}, **tls_values(pki))
    for sent in (b"", b"\x16\x03\x01"):  # nothing, or the start of a ClientHello
        _, writer = await asyncio.open_connection("127.0.0.1", ingress.port())
        writer.write(sent)
        writer.close()
    await eventually(lambda: len(ingress.listeners.sessions) == 0, timeout=2)


# -- failed handshakes end the session, and the session is accounted for ---------------------
async def test_a_failed_starttls_handshake_ends_the_session(make_ingress, dialogs, pki):
    ingress = await make_ingress(**tls_values(pki))
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert (await d.cmd("STARTTLS"))[0] == 220
    await d.send(b"this is not a ClientHello\r\n")
    assert await closed_silently(d.reader)
    await eventually(lambda: len(ingress.listeners.sessions) == 0)


async def test_the_handshake_has_smtpd_starttls_timeout(make_ingress, dialogs, pki) -> None:
    ingress = await make_ingress(**tls_values(pki, smtpd_starttls_timeout="0.3s"))
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    assert (await d.cmd("STARTTLS"))[0] == 220
    # No ClientHello ever comes: closed by the 0.3s limit, well before 3s.
    assert await closed_silently(d.reader, timeout=3)
    await eventually(lambda: len(ingress.listeners.sessions) == 0)


async def test_an_unloadable_certificate_stops_the_role(make_ingress, tmp_path) -> None:
    missing = tmp_path / "missing.crt"
    with pytest.raises(ValueError, match=r"smtpd_tls_cert_file=.*missing\.crt"):
        await make_ingress(smtpd_tls_security_level="may", smtpd_tls_cert_file=str(missing))


# -- certificate rotation (cert-manager renews the mounted Secret) ---------------------------
def _replace(source: Path, target: Path) -> None:
    temporary = target.with_suffix(".new")
    shutil.copyfile(source, temporary)
    os.replace(temporary, target)


async def _served_common_name(dialogs, port: int, pki) -> str:
    d = await dialogs(port)
    await d.cmd("EHLO client.test")
    await d.cmd("STARTTLS")
    await d.start_tls(pki.client_context())
    cert = d.writer.get_extra_info("peercert")
    await d.close()
    return dict(x[0] for x in cert["subject"])["commonName"]


@pytest.mark.slow
async def test_renewed_certificates_are_picked_up(
    make_ingress, dialogs, pki, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(tls, "RELOAD_CHECK_SECONDS", 0.0)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    _replace(pki.cert_file, cert)
    _replace(pki.key_file, key)
    ingress = await make_ingress(smtpd_tls_security_level="may", smtpd_tls_cert_file=str(cert),
                                 smtpd_tls_key_file=str(key))
    assert await _served_common_name(dialogs, ingress.port(), pki) == "mx.postfleet.test"

    new_cert, new_key = pki.issue("renewed", "mx-renewed.postfleet.test")
    _replace(new_key, key)
    _replace(new_cert, cert)
    assert await _served_common_name(dialogs, ingress.port(), pki) == "mx-renewed.postfleet.test"

    # A broken pair on disk: keep serving the last good one, and say so.
    caplog.set_level(logging.WARNING, logger="postfleet.ingress_smtp.tls")
    key.write_text("not a key\n")
    assert await _served_common_name(dialogs, ingress.port(), pki) == "mx-renewed.postfleet.test"
    assert any("keeping the previous certificate" in r.getMessage() for r in caplog.records)


# -- protocol ranges -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (">=TLSv1.2", ("TLSv1_2", "TLSv1_3")),
        (">=TLSv1", ("TLSv1", "TLSv1_3")),  # Postfix's own default
        ("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1", ("TLSv1_2", "TLSv1_3")),
        ("TLSv1.3", ("TLSv1_3", "TLSv1_3")),
        (">=TLSv1.2 <=TLSv1.2", ("TLSv1_2", "TLSv1_2")),
        ("", ("TLSv1", "TLSv1_3")),
    ],
)
def test_protocol_range(value: str, expected: tuple[str, str]) -> None:
    low, high = tls.protocol_range(value)
    assert (low.name, high.name) == expected


@pytest.mark.parametrize("value", ["SSLv3", ">=TLSv2", "TLSv1 TLSv1.3", "!TLSv1.3 <=TLSv1.3 "
                                   ">=TLSv1.3"])
def test_protocol_range_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        tls.protocol_range(value)


async def test_tls_facts_in_the_mail_log_and_received(
    make_ingress, dialogs, cleanup, pki, smtp_transaction, caplog
) -> None:
    ingress = await make_ingress(smtpd_tls_loglevel=1, smtpd_tls_received_header=True,
                                 **tls_values(pki))
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("STARTTLS")
    with caplog.at_level(logging.INFO, logger="postfleet.maillog"):
        await d.start_tls(pki.client_context())
        assert (await smtp_transaction(d, "a@b.example", ["c@d.example"], BODY)).startswith(
            "250 2.0.0 Ok: queued as")
    [line] = [r.getMessage() for r in caplog.records if "TLS connection" in r.getMessage()]
    assert line.endswith("Anonymous TLS connection established from unknown[127.0.0.1]: "
                         "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"), line
    assert line.startswith("postfix/smtpd[")
    [got] = cleanup.servicer.submitted
    assert list(got.envelope.client.received_comments) == [
        "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))",
        "(No client certificate requested)"]


async def test_no_tls_facts_by_default(make_ingress, dialogs, cleanup, pki, smtp_transaction,
                                       caplog) -> None:
    ingress = await make_ingress(**tls_values(pki))  # smtpd_tls_loglevel = 0, header = no
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("STARTTLS")
    with caplog.at_level(logging.INFO, logger="postfleet.maillog"):
        await d.start_tls(pki.client_context())
        await smtp_transaction(d, "a@b.example", ["c@d.example"], BODY)
    assert not [r for r in caplog.records if "TLS connection" in r.getMessage()]
    assert list(cleanup.servicer.submitted[0].envelope.client.received_comments) == []
