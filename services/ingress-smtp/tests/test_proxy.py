"""smtpd_upstream_proxy_protocol = haproxy: the client named by a PROXY v1/v2
header is the one mynetworks, the logs and Received: see; a missing,
garbled or address-less header closes the connection without a word."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.testing.swaks import swaks
from postfleet.core.testing.waiting import eventually
from postfleet.ingress_smtp.settings import Listener

# Loopback is outside mynetworks: only a PROXY-claimed 10.x client may relay.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["relay.example"])
DENIED = "554 5.7.1 <x@far.example>: Relay access denied"
V1 = b"PROXY TCP4 10.1.2.3 192.0.2.25 40000 25\r\n"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src: str = "", dst: str = "", sport: int = 0, dport: int = 0, *,
             local: bool = False) -> bytes:
    """A PROXY v2 header (haproxy proxy-protocol.txt section 2.2)."""
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    source, dest = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if source.version == 4 else 0x21  # TCP over IPv4 / IPv6
    addresses = source.packed + dest.packed + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(addresses)) + addresses


def listener(name: str, **overrides) -> Listener:
    return Listener(name=name, address="127.0.0.1", port=0, overrides=overrides)


@pytest.fixture
async def proxied(make_ingress):
    """Listener "lb" expects PROXY headers (per-listener -o); "internal" does not."""
    return await make_ingress(
        snapshot=OUTSIDE,
        listeners=[listener("lb", smtpd_upstream_proxy_protocol="haproxy"),
                   listener("internal")],
    )


async def relay_attempt(d) -> str:
    await d.cmd("EHLO client.test")
    assert await d.line("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    return await d.line("RCPT TO:<x@far.example>")


async def test_v1_header_names_the_client(proxied, dialogs, cleanup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="postfleet.maillog")
    d = await dialogs(proxied.port("lb"), preamble=V1)
    assert d.greeting == (220, ["mx.postfleet.test ESMTP postfleet"])
    assert await relay_attempt(d) == "250 2.1.5 Ok"  # 10.1.2.3 is in mynetworks
    assert (await d.data(b"Subject: via the load balancer\r\n\r\nhi\r\n.\r\n"))[0] == 250
    [got] = cleanup.servicer.submitted
    assert (got.envelope.client.address, got.envelope.client.port) == ("10.1.2.3", 40000)
    assert got.envelope.client.protocol == "ESMTP"
    assert any(r.getMessage().endswith("client=unknown[10.1.2.3]") for r in caplog.records)

    # The same client without a load balancer in between: 127.0.0.1, no relaying.
    direct = await dialogs(proxied.port("internal"))
    assert await relay_attempt(direct) == DENIED


async def test_v2_header_names_the_client(proxied, dialogs, cleanup, caplog) -> None:
    caplog.set_level(logging.INFO, logger="postfleet.maillog")
    d = await dialogs(proxied.port("lb"), preamble=proxy_v2("10.1.2.3", "192.0.2.25", 40001, 25))
    assert await relay_attempt(d) == "250 2.1.5 Ok"

    # IPv6, and outside mynetworks: the claimed address is not a free pass.
    v6 = await dialogs(proxied.port("lb"),
                       preamble=proxy_v2("2001:db8::5", "2001:db8::25", 40002, 25))
    assert await relay_attempt(v6) == DENIED
    assert any("RCPT from unknown[2001:db8::5]" in r.getMessage() for r in caplog.records)

    # LOCAL (the balancer's own health check): the socket's peer, 127.0.0.1.
    local = await dialogs(proxied.port("lb"), preamble=proxy_v2(local=True))
    assert await relay_attempt(local) == DENIED


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.slow
async def test_swaks_through_a_proxy(proxied, cleanup, version: str) -> None:
    code, out = await swaks(
        proxied.port("lb"),
        "--proxy-version", version, "--proxy-family", "TCP4" if version == "1" else "AF_INET",
        "--proxy-source", "10.9.8.7", "--proxy-source-port", "41000",
        "--proxy-dest", "192.0.2.25", "--proxy-dest-port", "25",
        "--from", "a@b.example", "--to", "x@far.example", "--body", "proxied")
    assert code == 0, out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    [got] = cleanup.servicer.submitted
    assert got.envelope.client.address == "10.9.8.7"


@pytest.mark.parametrize(
    "preamble",
    [
        pytest.param(b"EHLO client.test\r\n", id="no-header"),
        pytest.param(b"PROXY TCP4 10.1.2.3 nonsense\r\n", id="garbled-v1"),
        pytest.param(b"PROXY UNKNOWN\r\n", id="v1-unknown"),  # Postfix refuses it too
        pytest.param(V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), id="bad-v2-version"),
        pytest.param(V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), id="v2-udp"),
    ],
)
async def test_bad_header_closes_without_a_word(proxied, cleanup, preamble: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port("lb"))
    try:
        writer.write(preamble)
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()
    assert cleanup.servicer.calls == 0
    await eventually(lambda: len(proxied.listeners.sessions) == 0)


@pytest.mark.parametrize("sent", [b"", b"PRO", b"PROXY TCP4 10.1.2.3"])
async def test_health_checks_that_hang_up_leave_nothing_behind(proxied, sent: bytes) -> None:
    # A load balancer's TCP check connects and leaves, maybe mid-header: the
    # session goes at once, not at smtpd_upstream_proxy_timeout.
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", proxied.port("lb"))
        writer.write(sent)
        writer.close()
    await eventually(lambda: len(proxied.listeners.sessions) == 0, timeout=2)


async def test_no_header_in_time_closes(make_ingress) -> None:
    ingress = await make_ingress(overrides={"smtpd_upstream_proxy_protocol": "haproxy",
                                            "smtpd_upstream_proxy_timeout": "0.3s"})
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port())
    try:
        # Closed by the 0.3s limit, well before 3s; no 421 either.
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


async def test_proxy_then_tls_on_smtps(make_ingress, dialogs, cleanup, pki, smtp_transaction):
    # A load balancer passing 465 through: the PROXY header, then the handshake.
    ingress = await make_ingress(
        snapshot=OUTSIDE,
        overrides={"smtpd_upstream_proxy_protocol": "haproxy", "smtpd_tls_wrappermode": True},
        smtpd_tls_cert_file=str(pki.cert_file), smtpd_tls_key_file=str(pki.key_file))
    d = await dialogs(ingress.port(), preamble=V1, tls=pki.client_context())
    assert d.greeting == (220, ["mx.postfleet.test ESMTP postfleet"])
    assert await smtp_transaction(d, "a@b.example", ["x@far.example"], b"hi\r\n.\r\n") == (
        "250 2.0.0 Ok: queued as 4Q0001")
    [got] = cleanup.servicer.submitted
    assert (got.envelope.client.address, got.envelope.client.protocol) == ("10.1.2.3", "ESMTPS")
