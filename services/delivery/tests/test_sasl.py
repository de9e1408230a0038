"""Client SASL against a real server that requires AUTH (aiosmtpd, PLAIN and
LOGIN, offered only under STARTTLS unless told otherwise): a relayhost with
credentials from smtp_sasl_password_maps, a refused password, no plaintext
password in clear text, no clear-text fallback with credentials, a changed
password file."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.sink import SmtpSink
from postfleet.delivery.settings import DeliverySettings

from .conftest import only, send, tls_settings

USERS = {"relay-user": "s3cret"}
# aiosmtpd warns about a server offering AUTH without TLS, which two tests want.
CLEAR_AUTH = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def sasl_settings(dns: DnsServer, table: Path, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = dict(
        smtp_tls_security_level="may", smtp_sasl_auth_enable=True,
        smtp_sasl_password_maps=f"texthash:{table}")
    values.update(overrides)
    return tls_settings(dns, **values)


def password_table(path: Path, key: str, credentials: str) -> Path:
    path.write_text(f"# smtp_sasl_password_maps\n{key}   {credentials}\n")
    return path


@pytest.mark.parametrize("nexthop, key", [
    ("[mx.tls.test]:{port}", "[mx.tls.test]:{port}"),  # relayhost = [host]:port, as written
    ("tls.test:{port}", "mx.tls.test"),  # an MX host, by its host name
])
async def test_relayhost_with_credentials_over_tls(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    tmp_path: Path, nexthop: str, key: str,
) -> None:
    sink = serve(certs["good"], users=USERS)
    table = password_table(tmp_path / "sasl_passwd", key.format(port=sink.port),
                           "relay-user:s3cret")
    delivery = await send(sasl_settings(tls_dns, table), nexthop.format(port=sink.port))
    assert only(delivery)[:2] == ("sent", "2.0.0")
    (received,) = sink.messages
    assert (received.tls, received.login) == (True, "relay-user")
    assert sink.users is not None and sink.users.attempts == [("PLAIN", "relay-user")]


@pytest.mark.parametrize("soft_bounce, status, dsn", [
    (True, "deferred", "4.7.8"), (False, "bounced", "5.7.8")])
async def test_a_refused_password(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    tmp_path: Path, soft_bounce: bool, status: str, dsn: str,
) -> None:
    sink = serve(certs["good"], users=USERS)
    nexthop = f"[mx.tls.test]:{sink.port}"
    table = password_table(tmp_path / "sasl_passwd", nexthop, "relay-user:wrong")
    settings = sasl_settings(tls_dns, table, smtp_sasl_auth_soft_bounce=soft_bounce)
    assert only(await send(settings, nexthop)) == (
        status, dsn, "SASL authentication failed; server mx.tls.test[127.0.0.1] said: "
        "535 5.7.8 Authentication credentials invalid")
    assert sink.messages == []


@CLEAR_AUTH
async def test_no_plaintext_password_in_clear_text_unless_the_options_allow(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], tmp_path: Path,
) -> None:
    sink = serve(users=USERS, auth_require_tls=False)  # AUTH PLAIN offered in the clear
    nexthop = f"[mx.tls.test]:{sink.port}"
    table = password_table(tmp_path / "sasl_passwd", nexthop, "relay-user:s3cret")
    assert only(await send(sasl_settings(tls_dns, table), nexthop)) == (
        "deferred", "4.7.0", "SASL authentication failed; cannot authenticate to server "
        "mx.tls.test[127.0.0.1]: no mechanism available")
    assert sink.users is not None and sink.users.attempts == []
    # smtp_sasl_security_options without noplaintext: the site's choice.
    allowing = sasl_settings(tls_dns, table, smtp_sasl_security_options=["noanonymous"])
    assert only(await send(allowing, nexthop))[0] == "sent"
    assert [(m.tls, m.login) for m in sink.messages] == [(False, "relay-user")]


@CLEAR_AUTH
async def test_no_clear_text_fallback_when_credentials_would_go_out(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    sink = serve(certs["good"], maximum=ssl.TLSVersion.TLSv1_2, users=USERS,
                 auth_require_tls=False)
    nexthop = f"[mx.tls.test]:{sink.port}"
    table = password_table(tmp_path / "sasl_passwd", nexthop, "relay-user:s3cret")
    settings = sasl_settings(tls_dns, table, smtp_tls_protocols=">=TLSv1.3")
    assert only(await send(settings, nexthop)) == (
        "deferred", "4.7.5", "Cannot start TLS: handshake failure")
    assert sink.messages == []


async def test_a_changed_password_file_applies_at_the_next_session(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    sink = serve(certs["good"], users=USERS)
    nexthop = f"[mx.tls.test]:{sink.port}"
    table = password_table(tmp_path / "sasl_passwd", nexthop, "relay-user:old")
    settings = sasl_settings(tls_dns, table)
    assert only(await send(settings, nexthop))[1] == "4.7.8"
    password_table(table, nexthop, "relay-user:s3cret")  # rotated, as a Secret would be
    assert only(await send(settings, nexthop))[0] == "sent"
    missing = sasl_settings(tls_dns, tmp_path / "nowhere")
    status, dsn, reply = only(await send(missing, nexthop))
    assert (status, dsn) == ("deferred", "4.3.0")
    assert reply.startswith("smtp_sasl_password_maps lookup error: texthash:")
