"""Outbound TLS against real servers: aiosmtpd with STARTTLS and certificates
issued in the test by a CA of its own, found through dnsmasq. Each security
level's outcome (may, encrypt, verify, secure), smtp_tls_policy_maps from the
routing snapshot, and the TLS facts in the mail log."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.db.status import Outcome
from postfleet.core.routing.nexthop import parse_nexthop
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView, publish_snapshot
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.pki import TestCa
from postfleet.core.testing.scripted import scripted_server
from postfleet.core.testing.sink import SmtpSink
from postfleet.core.testing.waiting import eventually
from postfleet.delivery.tls import (
    PolicyError,
    TlsPolicy,
    mx_listed,
    name_matches,
    parse_policy,
    parse_protocols,
    policy_keys,
)

from .conftest import Bus, StartAgent, make_job, only, queue_message, send, tls_settings

# -- may ------------------------------------------------------------------------------


async def test_may_goes_over_tls_and_logs_the_session(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    maillog: Callable[[], list[str]],
) -> None:
    sink = serve(certs["wrong"])  # not checked at "may"
    delivery = await send(tls_settings(tls_dns, smtp_tls_security_level="may"),
                          f"[mx.tls.test]:{sink.port}")
    assert only(delivery)[:2] == ("sent", "2.0.0")
    assert sink.messages[0].tls
    relay = f"mx.tls.test[127.0.0.1]:{sink.port}"
    # Postfix's wording; the cipher is whatever the two OpenSSLs agree on.
    summary = re.compile(rf"postfix/smtp\[\d+\]: Untrusted TLS connection established to "
                         rf"{re.escape(relay)}: TLSv1\.3 with cipher TLS_\w+ \((\d+)/\1 bits\)")
    assert any(summary.fullmatch(line) for line in maillog()), maillog()


async def test_may_falls_back_to_clear_text_when_the_handshake_fails(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    maillog: Callable[[], list[str]],
) -> None:
    # The server speaks TLS 1.2 at most; this client wants 1.3.
    sink = serve(certs["good"], maximum=ssl.TLSVersion.TLSv1_2)
    delivery = await send(
        tls_settings(tls_dns, smtp_tls_security_level="may", smtp_tls_protocols=">=TLSv1.3"),
        f"[mx.tls.test]:{sink.port}")
    assert only(delivery)[:2] == ("sent", "2.0.0")
    assert [m.tls for m in sink.messages] == [False]
    assert any("Cannot start TLS: handshake failure with mx.tls.test[127.0.0.1]" in line
               and "trying again without TLS" in line for line in maillog())


async def test_none_never_starts_tls(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
) -> None:
    sink = serve(certs["good"])
    delivery = await send(tls_settings(tls_dns), f"[mx.tls.test]:{sink.port}")  # default: none
    assert only(delivery)[:2] == ("sent", "2.0.0")
    assert [m.tls for m in sink.messages] == [False]


# -- encrypt --------------------------------------------------------------------------


async def test_encrypt_defers_on_a_handshake_failure(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
) -> None:
    sink = serve(certs["good"], maximum=ssl.TLSVersion.TLSv1_2)
    delivery = await send(
        tls_settings(tls_dns, smtp_tls_security_level="encrypt",
                 smtp_tls_mandatory_protocols=">=TLSv1.3"),
        f"[mx.tls.test]:{sink.port}")
    assert only(delivery) == ("deferred", "4.7.5", "Cannot start TLS: handshake failure")
    assert delivery.relay == f"mx.tls.test[127.0.0.1]:{sink.port}"
    assert sink.messages == []


async def test_encrypt_defers_when_starttls_is_not_offered(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink],
) -> None:
    sink = serve()  # no TLS at all
    delivery = await send(tls_settings(tls_dns, smtp_tls_security_level="encrypt"),
                          f"[mx.tls.test]:{sink.port}")
    assert only(delivery) == (
        "deferred", "4.7.4", "TLS is required, but was not offered by host "
        "mx.tls.test[127.0.0.1]")
    assert sink.messages == []


async def test_encrypt_defers_when_starttls_is_refused(tls_dns: DnsServer) -> None:
    async def refuses_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 refuser.test ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-refuser.test\r\n250 STARTTLS\r\n")
        await reader.readline()  # STARTTLS
        writer.write(b"454 4.7.0 TLS not available due to local problem\r\n")
        await writer.drain()
        await reader.readline()  # QUIT, or the client hangs up

    async with scripted_server(refuses_tls) as server:
        delivery = await send(tls_settings(tls_dns, smtp_tls_security_level="encrypt"),
                              f"[mx.tls.test]:{server.port}")
    assert only(delivery) == (
        "deferred", "4.7.0", "TLS is required, but host mx.tls.test[127.0.0.1] refused to "
        "start TLS: 454 4.7.0 TLS not available due to local problem")


# -- verify and secure ----------------------------------------------------------------


async def test_verify_delivers_when_the_certificate_matches(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    test_ca: TestCa, maillog: Callable[[], list[str]],
) -> None:
    sink = serve(certs["good"])
    verify = tls_settings(tls_dns, smtp_tls_security_level="verify",
                          smtp_tls_CAfile=str(test_ca.ca_file))
    delivery = await send(verify, f"[mx.tls.test]:{sink.port}")
    assert only(delivery)[:2] == ("sent", "2.0.0")
    assert sink.messages[0].tls
    assert any(f"Verified TLS connection established to mx.tls.test[127.0.0.1]:{sink.port}: "
               "TLSv1.3 with cipher " in line for line in maillog()), maillog()


@pytest.mark.parametrize(("cert", "trusted", "logged"), [
    ("wrong", True, "name does not match mx.tls.test"),  # a name mismatch
    ("good", False, "unable to get local issuer certificate"),  # an untrusted chain
])
async def test_verify_defers_when_the_certificate_does_not_do(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    test_ca: TestCa, tmp_path: Path, maillog: Callable[[], list[str]],
    cert: str, trusted: bool, logged: str,
) -> None:
    ca = test_ca if trusted else TestCa(tmp_path / "other-ca", "another CA")
    sink = serve(certs[cert])
    delivery = await send(
        tls_settings(tls_dns, smtp_tls_security_level="verify", smtp_tls_CAfile=str(ca.ca_file)),
        f"[mx.tls.test]:{sink.port}")
    assert only(delivery) == ("deferred", "4.7.5", "Server certificate not verified")
    assert sink.messages == []
    assert any("server certificate verification failed for mx.tls.test[127.0.0.1]" in line
               and logged in line for line in maillog()), maillog()


async def test_secure_matches_the_nexthop_domain_of_an_mx_delivery(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    test_ca: TestCa,
) -> None:
    # secure: nexthop, dot-nexthop -- mx.tls.test is under tls.test.
    sink = serve(certs["good"])
    values = dict(smtp_tls_security_level="secure", smtp_tls_CAfile=str(test_ca.ca_file))
    secure = tls_settings(tls_dns, **values)
    assert only(await send(secure, f"tls.test:{sink.port}"))[0] == "sent"
    # The same server named by its own [host]: mx.tls.test is the next hop itself.
    assert only(await send(secure, f"[mx.tls.test]:{sink.port}"))[0] == "sent"
    # A next hop the certificate does not name.
    strict = tls_settings(tls_dns, **values, smtp_tls_secure_cert_match=["nexthop"])
    assert only(await send(strict, f"tls.test:{sink.port}"))[1] == "4.7.5"


# -- smtp_tls_policy_maps -------------------------------------------------------------


async def test_policy_maps_from_the_routing_snapshot(
    tls_dns: DnsServer, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    test_ca: TestCa,
) -> None:
    sink = serve(certs["wrong"])
    nexthop = f"[mx.tls.test]:{sink.port}"
    base = tls_settings(tls_dns, smtp_tls_CAfile=str(test_ca.ca_file))  # level none

    def routing(policy: str) -> RoutingSnapshot:
        return RoutingSnapshot(smtp_tls_policy_maps={nexthop: policy})

    assert only(await send(base, nexthop, routing=routing("verify")))[1:] == (
        "4.7.5", "Server certificate not verified")
    assert only(await send(base, nexthop, routing=routing("verify match=other.test")))[0] == (
        "sent")
    assert only(await send(base, nexthop, routing=routing("may")))[0] == "sent"
    assert [m.tls for m in sink.messages] == [True, True]
    status, dsn, reply = only(await send(base, nexthop, routing=routing("dane")))
    assert (status, dsn) == ("deferred", "4.7.5")
    assert reply == (f"TLS policy lookup for {nexthop}: [mx.tls.test]:{sink.port} 'dane': "
                     "TLS security level 'dane' is not implemented")


# -- units ----------------------------------------------------------------------------


def test_policy_keys() -> None:
    assert policy_keys("[Mail.Example.org]", parse_nexthop("[Mail.Example.org]")) == [
        "[mail.example.org]"]
    assert policy_keys("[mail.example.org]:25", parse_nexthop("[mail.example.org]:25")) == [
        "[mail.example.org]:25", "[mail.example.org]"]
    assert policy_keys("a.b.example.org", parse_nexthop("a.b.example.org")) == [
        "a.b.example.org", ".b.example.org", ".example.org", ".org"]
    assert policy_keys("example.org:2525", parse_nexthop("example.org:2525")) == [
        "example.org:2525"]


def test_parse_policy_and_protocols() -> None:
    assert parse_policy("secure match=nexthop:.example.org protocols=>=TLSv1.2") == TlsPolicy(
        "secure", ("nexthop", ".example.org"), ">=TLSv1.2", "smtp_tls_policy_maps")
    for bad in ("", "dane-only", "whatever", "may ciphers=high", "encrypt match=x",
                "verify protocols=TLSv9"):
        with pytest.raises(PolicyError):
            parse_policy(bad)
    tls12, tls13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    assert parse_protocols(">=TLSv1.2").minimum == tls12
    assert parse_protocols("!SSLv2, !SSLv3, !TLSv1, !TLSv1.1").minimum == tls12
    assert parse_protocols("<=TLSv1.2").maximum == tls12
    assert parse_protocols("TLSv1.3").minimum == tls13
    with pytest.raises(PolicyError):
        parse_protocols("TLSv1, !TLSv1.1, TLSv1.2")  # a hole


def test_certificate_names_and_mx_patterns() -> None:
    assert name_matches("mx.example.org", "mx.example.org")
    assert name_matches("*.example.org", "mx.example.org")
    assert not name_matches("*.example.org", "a.mx.example.org")
    assert name_matches("mx.example.org", ".example.org")
    assert not name_matches("example.org", ".example.org")
    assert mx_listed("mx1.example.org.", ("*.example.org",))
    assert not mx_listed("mx1.evil.test", ("*.example.org", "mx.example.org"))


# -- the delivery role, with the policy from NATS KV --------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_role_follows_the_policy_in_the_routing_snapshot(
    engine: AsyncEngine, bus: Bus, start_agent: StartAgent, tls_dns: DnsServer,
    serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]], test_ca: TestCa,
) -> None:
    """Published as the operator publishes a Transport's spec.tls, applied
    by a running delivery process, changed live."""
    sink = serve(certs["wrong"])
    nexthop = f"[mx.tls.test]:{sink.port}"
    view = RoutingView()
    await view.start(bus.js)
    try:
        await start_agent(routing=lambda: view.snapshot, dns_nameservers=[tls_dns.nameserver],
                          smtp_tls_CAfile=str(test_ca.ca_file))

        async def deliver(policy: str) -> tuple[str, str]:
            stored = await publish_snapshot(
                bus.js, RoutingSnapshot(smtp_tls_policy_maps={nexthop: policy}))
            await eventually(lambda: view.snapshot.version == stored.version,
                             what=f"snapshot {stored.version} in force")
            job = make_job(await queue_message(engine, ["bob@dest.test"]), nexthop)
            await bus.publish_job(job)
            result = next(r for r in await bus.results(len(bus.seen) + 1)
                      if r.job_id == job.job_id)
            rcpt = result.recipients[0]
            return Outcome.from_proto(rcpt.outcome), rcpt.dsn

        assert await deliver("verify") == ("deferred", "4.7.5")
        assert sink.messages == []
        assert await deliver("verify match=other.test") == ("sent", "2.0.0")
        assert [m.tls for m in sink.messages] == [True]
    finally:
        await view.stop()
