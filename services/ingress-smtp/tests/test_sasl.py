"""SMTP AUTH against both backends -- a real Dovecot auth service and the
built-in user table, serving the same passwd-file -- with swaks as the mail
client (submission on 587 with STARTTLS, smtps on 465 in wrapper mode) and
a bare dialog for Postfix's replies, step by step."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.sasl_users import UserTable
from postfleet.core.testing.swaks import swaks
from postfleet.ingress_smtp.settings import Listener

USER, PASSWORD = "alice@example.test", "correct horse"
# 127.0.0.1 (the tests' client) is outside mynetworks: only AUTH may relay.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"])
SUBMISSION = {  # Postfix's master.cf submission service
    "smtpd_tls_security_level": "encrypt", "smtpd_sasl_auth_enable": True,
    "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
}
SMTPS = {"smtpd_tls_wrappermode": True, "smtpd_sasl_auth_enable": True,
         "smtpd_relay_restrictions": "permit_sasl_authenticated, reject"}
BODY = b"Subject: auth\r\n\r\nsent after AUTH\r\n.\r\n"


@dataclass
class Backend:
    kind: str
    values: dict  # smtpd_sasl_type, smtpd_sasl_path


@pytest.fixture(params=["builtin", "dovecot"])
def backend(request, tmp_path, make_dovecot_auth) -> Backend:
    users = tmp_path / "users"
    UserTable(users).add(USER, PASSWORD)
    path = str(users)
    if request.param == "dovecot":
        path = make_dovecot_auth(users).sasl_path
    return Backend(request.param, {"smtpd_sasl_type": request.param, "smtpd_sasl_path": path})


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str = USER, password: str = PASSWORD) -> str:
    return b64(f"\0{user}\0{password}")


def tls_values(pki) -> dict:
    return {"smtpd_tls_cert_file": str(pki.cert_file), "smtpd_tls_key_file": str(pki.key_file)}


def swaks_auth(password: str) -> list[str]:
    return ["--auth", "PLAIN", "--auth-user", USER, "--auth-password", password,
            "--from", USER, "--to", "someone@elsewhere.example", "--body", "relayed after AUTH"]


# -- the "done when", with swaks -------------------------------------------------
async def test_submission_587(make_ingress, cleanup, pki, backend) -> None:
    ingress = await make_ingress(
        snapshot=OUTSIDE, listeners=[
            Listener(name="smtp", port=0),
            Listener(name="submission", port=0, overrides={**SUBMISSION, **backend.values})],
        **tls_values(pki))
    port = ingress.port("submission")
    # Before STARTTLS no AUTH is offered, and swaks cannot authenticate.
    code, out = await swaks(port, "--quit-after", "EHLO")
    assert "250-STARTTLS" in out and "AUTH" not in out.split("EHLO", 1)[1], out
    code, out = await swaks(port, *swaks_auth(PASSWORD))
    assert code != 0 and "Host did not advertise authentication" in out, out
    # After STARTTLS: a good password relays anywhere ...
    tls = ["--tls", "--tls-verify", "--tls-ca-path", str(pki.ca_file)]
    code, out = await swaks(port, *tls, *swaks_auth(PASSWORD))
    assert code == 0, out
    assert "250-AUTH PLAIN LOGIN" in out
    assert "235 2.7.0 Authentication successful" in out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    [got] = cleanup.servicer.submitted
    assert got.envelope.client.protocol == "ESMTPSA"
    assert got.envelope.client.sasl_username == USER
    assert [r.address for r in got.envelope.recipients] == ["someone@elsewhere.example"]
    # ... and a bad one gets 535.
    code, out = await swaks(port, *tls, *swaks_auth("wrong"))
    assert code != 0
    assert "535 5.7.8 Error: authentication failed" in out, out
    assert len(cleanup.servicer.submitted) == 1
    # Port 25 of the same server relays nothing for an outside client.
    code, out = await swaks(ingress.port("smtp"), "--to", "someone@elsewhere.example")
    assert "554 5.7.1 <someone@elsewhere.example>: Relay access denied" in out, out


async def test_smtps_465(make_ingress, cleanup, pki, backend) -> None:
    ingress = await make_ingress(
        snapshot=OUTSIDE,
        listeners=[Listener(name="smtps", port=0, overrides={**SMTPS, **backend.values})],
        **tls_values(pki))
    tlsc = ["--tlsc", "--tls-verify", "--tls-ca-path", str(pki.ca_file)]
    code, out = await swaks(ingress.port("smtps"), *tlsc, *swaks_auth(PASSWORD))
    assert code == 0, out
    assert "235 2.7.0 Authentication successful" in out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    code, out = await swaks(ingress.port("smtps"), *tlsc, *swaks_auth("wrong"))
    assert "535 5.7.8 Error: authentication failed" in out, out
    # Without AUTH nothing relays (smtpd_relay_restrictions = permit_sasl_authenticated, reject).
    code, out = await swaks(ingress.port("smtps"), *tlsc, "--to", "x@elsewhere.example")
    assert "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: Access denied" in out
    assert cleanup.servicer.calls == 1


# -- the exchange, step by step ----------------------------------------------------------
async def test_auth_login_and_plain_exchanges(make_ingress, dialogs, cleanup, backend) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE, smtpd_sasl_auth_enable=True,
                                 smtpd_sasl_authenticated_header=True, **backend.values)
    d = await dialogs(ingress.port())
    _, features = await d.cmd("EHLO client.test")
    assert "AUTH PLAIN LOGIN" in features
    assert await d.line("AUTH") == "501 5.5.4 Syntax: AUTH mechanism"
    assert await d.line("AUTH CRAM-MD5") == (
        "535 5.7.8 Error: authentication failed: Invalid authentication mechanism: 'CRAM-MD5'")
    assert await d.line("AUTH PLAIN not*base64") == (
        "535 5.7.8 Error: authentication failed: Invalid base64 data in initial response")
    # LOGIN: user name, then password, each after a 334 challenge; "*" gives up.
    assert await d.line("AUTH LOGIN") == f"334 {b64('Username:')}"
    assert await d.line(b64(USER)) == f"334 {b64('Password:')}"
    assert await d.line("*") == "501 5.7.0 Authentication aborted"
    assert await d.line("AUTH LOGIN") == f"334 {b64('Username:')}"
    await d.cmd(b64(USER))
    assert (await d.line(b64("wrong"))).startswith("535 5.7.8 Error: authentication failed")
    # PLAIN without an initial response: an empty challenge first.
    assert await d.line("AUTH PLAIN") == "334 "
    assert await d.line(plain()) == "235 2.7.0 Authentication successful"
    assert await d.line("AUTH PLAIN " + plain()) == "503 5.5.1 Error: already authenticated"
    # AUTH= on MAIL FROM is accepted once; AUTH inside a transaction is not.
    assert await d.line(f"MAIL FROM:<{USER}> AUTH=<> AUTH=x") == (
        "503 5.5.4 Error: multiple AUTH= options")
    assert await d.line(f"MAIL FROM:<{USER}> AUTH=<>") == "250 2.1.0 Ok"
    assert await d.line("AUTH PLAIN " + plain()) == "503 5.5.1 Error: MAIL transaction in progress"
    assert await d.line("RCPT TO:<x@elsewhere.example>") == "250 2.1.5 Ok"
    code, lines = await d.data(BODY)
    assert (code, lines[-1]) == (250, "2.0.0 Ok: queued as 4Q0001")
    [got] = cleanup.servicer.submitted
    assert got.envelope.client.protocol == "ESMTPA"
    assert list(got.envelope.client.received_comments) == [f"(Authenticated sender: {USER})"]


async def test_auth_needs_tls_when_told(make_ingress, dialogs, pki, backend) -> None:
    ingress = await make_ingress(smtpd_sasl_auth_enable=True, smtpd_tls_auth_only=True,
                                 smtpd_tls_security_level="may", **tls_values(pki),
                                 **backend.values)
    d = await dialogs(ingress.port())
    _, features = await d.cmd("EHLO client.test")
    assert not any(f.startswith("AUTH") for f in features)
    assert await d.line("AUTH PLAIN " + plain()) == "503 5.5.1 Error: authentication not enabled"
    await d.cmd("STARTTLS")
    await d.start_tls(pki.client_context())
    _, features = await d.cmd("EHLO client.test")
    assert "AUTH PLAIN LOGIN" in features
    assert await d.line("AUTH PLAIN " + plain()) == "235 2.7.0 Authentication successful"


async def test_auth_is_off_unless_enabled(make_ingress, dialogs) -> None:
    ingress = await make_ingress()
    d = await dialogs(ingress.port())
    _, features = await d.cmd("EHLO client.test")
    assert not any(f.startswith("AUTH") for f in features)
    assert await d.line("AUTH PLAIN " + plain()) == "503 5.5.1 Error: authentication not enabled"


async def test_an_unreachable_dovecot_is_a_temporary_failure(make_ingress, dialogs) -> None:
    from postfleet.core.sockets import free_port

    ingress = await make_ingress(smtpd_sasl_auth_enable=True, smtpd_sasl_type="dovecot",
                                 smtpd_sasl_path=f"inet:127.0.0.1:{free_port()}")
    d = await dialogs(ingress.port())
    _, features = await d.cmd("EHLO client.test")
    assert not any(f.startswith("AUTH") for f in features)  # no mechanisms to announce
    assert await d.line("AUTH PLAIN " + plain()) == (
        "454 4.7.0 Temporary authentication failure: Can't connect to authentication server")


@pytest.mark.parametrize(("values", "error"), [
    ({"smtpd_sasl_auth_enable": True}, "needs smtpd_sasl_path"),
    ({"smtpd_sasl_auth_enable": True, "smtpd_sasl_type": "dovecot",
      "smtpd_sasl_path": "inet:nohost"}, "inet:host:port"),
    ({"smtpd_sasl_type": "cyrus"}, "smtpd_sasl_type"),
])
def test_bad_sasl_settings_are_refused(values, error) -> None:
    from postfleet.ingress_smtp.settings import IngressSettings

    with pytest.raises(ValueError, match=error):
        IngressSettings(myhostname="mx.postfleet.test", **values)
