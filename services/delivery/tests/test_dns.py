"""The smtp transport's MX and host lookups against a real DNS server (dnsmasq
on a loopback port) and real SMTP servers on 127.0.0.x: MX preference and
fallback, no MX -> A, NXDOMAIN, server failures, [host] without MX, mail that
loops back to this host, DNS disabled, native lookups, the address and
session limits. The transport is driven directly (no bus, no queue store)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from postfleet.core.routing.nexthop import parse_nexthop
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.scripted import scripted_server
from postfleet.core.testing.sink import SmtpSink
from postfleet.delivery.hostlookup import DnsPolicy, DnsResolver, make_dns_client
from postfleet.delivery.outcome import Delivery
from postfleet.delivery.settings import DeliverySettings

from .conftest import BODY, NO_DNS, send

MYHOSTNAME = "mx.postfleet.test"

ZONE: dict[str, Any] = {
    "mx": {
        "example.test": [(10, "mx1.example.test"), (20, "mx2.example.test")],
        "backup.test": [(10, "down.example.test"), (20, "mx2.example.test")],
        "three.test": [(10, "mx1.example.test"), (20, "mx2.example.test"),
                       (30, "mx3.example.test")],
        "direct.test": [(10, "mx2.example.test")],
        "self.test": [(10, MYHOSTNAME)],
        "selfprimary.test": [(10, MYHOSTNAME), (20, "mx1.example.test")],
        "selfbackup.test": [(10, "mx1.example.test"), (20, MYHOSTNAME)],
        "native.test": [(10, "localhost")],
        "ghost.test": [(10, "nowhere.example.test")],
        "null.test": [(0, ".")],
        "equal.test": [(10, "mx1.example.test"), (10, "mx2.example.test"),
                       (10, "mx3.example.test")],
    },
    "hosts": {
        "mx1.example.test": "127.0.0.2",
        "mx2.example.test": "127.0.0.3",
        "mx3.example.test": "127.0.0.4",
        "down.example.test": "127.0.0.9",  # nothing listens there
        MYHOSTNAME: "127.0.0.5",
        "plain.test": "127.0.0.3",  # no MX: its own address
        "direct.test": "127.0.0.2",  # [direct.test] goes here, not to its MX
    },
}

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def _port_free_on(hosts: tuple[str, ...]) -> int:
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


@pytest.fixture
def port() -> int:
    """One port free on every 127.0.0.x the MX hosts live on (MX gives no port)."""
    return _port_free_on((*HOSTS, "127.0.0.1", "127.0.0.9"))


@pytest.fixture
def sinks(port: int) -> Iterator[dict[str, SmtpSink]]:
    """An SMTP sink on 127.0.0.2, .3 and .4, all on the same port."""
    started = {host: SmtpSink(host, port).start() for host in HOSTS}
    try:
        yield started
    finally:
        for sink in started.values():
            sink.stop()


@pytest.fixture
def dns(make_dns: Callable[..., DnsServer]) -> DnsServer:
    return make_dns(ZONE)


def settings_for(dns: DnsServer | None, **overrides: Any) -> DeliverySettings:
    values: dict[str, Any] = dict(
        myhostname=MYHOSTNAME, smtp_connect_timeout=5.0, smtp_helo_timeout=5.0,
        dns_nameservers=[dns.nameserver if dns else NO_DNS], dns_timeout=2.0,
    )
    values.update(overrides)
    return DeliverySettings(**values)


def sent_to(sinks: dict[str, SmtpSink]) -> list[str]:
    return [host for host, sink in sinks.items() for _ in sink.messages]


def assert_sent_via(delivery: Delivery, relay: str, sinks: dict[str, SmtpSink]) -> None:
    """Sent 2.0.0 to ``relay`` ("name[ip]:port"), the only sink that got mail."""
    (result,) = delivery.outcomes
    assert (result.status, result.dsn) == ("sent", "2.0.0"), delivery
    assert delivery.relay == relay
    assert sent_to(sinks) == [relay[relay.index("[") + 1 : relay.index("]")]]


async def test_mx_preference_wins(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int
) -> None:
    settings = settings_for(dns)
    for _ in range(3):
        delivery = await send(settings, f"example.test:{port}")
        assert delivery.relay == f"mx1.example.test[127.0.0.2]:{port}"
        assert delivery.outcomes[0].status == "sent"
    assert sent_to(sinks) == ["127.0.0.2"] * 3
    assert sinks["127.0.0.2"].messages[0].data == BODY
    assert ("MX", "example.test") in dns.queries()


async def test_next_mx_when_the_first_refuses_connections(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int
) -> None:
    delivery = await send(settings_for(dns), f"backup.test:{port}")
    assert_sent_via(delivery, f"mx2.example.test[127.0.0.3]:{port}", sinks)


async def test_next_mx_after_a_4xx_greeting(dns: DnsServer, port: int) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"421 4.3.2 mx1 busy, try later\r\n")
        await writer.drain()

    with SmtpSink("127.0.0.3", port) as second:
        async with scripted_server(busy, "127.0.0.2", port):
            delivery = await send(settings_for(dns), f"example.test:{port}")
    assert delivery.outcomes[0].status == "sent"
    assert delivery.relay == f"mx2.example.test[127.0.0.3]:{port}"
    assert len(second.messages) == 1


async def test_every_mx_down_defers_with_the_last_error(dns: DnsServer, port: int) -> None:
    delivery = await send(settings_for(dns), f"backup.test:{port}")  # no sinks at all
    (result,) = delivery.outcomes
    assert (result.status, result.dsn) == ("deferred", "4.4.1")
    assert result.reply == f"connect to mx2.example.test[127.0.0.3]:{port}: Connection refused"
    assert delivery.relay == "none"


NOT_FOUND = "Host or domain name not found. Name service error for name={} type={}: Host not found"


@pytest.mark.parametrize(
    ("nexthop", "overrides", "expected"),
    [
        ("nx.test", {}, ("bounced", "5.4.4", NOT_FOUND.format("nx.test", "MX"))),
        ("ghost.test", {"inet_protocols": "ipv4"},
         ("bounced", "5.4.4", NOT_FOUND.format("nowhere.example.test", "A"))),
        ("null.test", {},
         ("bounced", "5.1.10", "Domain null.test does not accept mail (nullMX)")),
        # No zone and no upstream for .example: dnsmasq answers REFUSED.
        ("elsewhere.example", {},
         ("deferred", "4.4.3", NOT_FOUND.format("elsewhere.example", "MX") + ", try again")),
    ],
    ids=["nxdomain-bounces-5.4.4", "mx-host-without-address-bounces", "null-mx-bounces",
         "server-failure-defers-4.4.3"],
)
async def test_lookup_failures(
    dns: DnsServer, nexthop: str, overrides: dict[str, str], expected: tuple[str, str, str]
) -> None:
    (result,) = (await send(settings_for(dns, **overrides), nexthop)).outcomes
    assert (result.status, result.dsn, result.reply) == expected


async def test_dns_timeout_defers_4_4_3() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # never answers
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        settings = settings_for(None, dns_nameservers=[server], dns_timeout=0.3)
        # dns_timeout bounds the lookup (dnspython alone would wait 5 s).
        (result,) = (await asyncio.wait_for(send(settings, "slow.test"), 3)).outcomes
    assert (result.status, result.dsn) == ("deferred", "4.4.3")
    assert "name=slow.test type=MX: Host not found, try again" in result.reply


@pytest.mark.parametrize(
    ("nexthop", "relay", "lookups"),
    [
        # No MX record: the domain's own address, asked for after the MX.
        ("plain.test", "plain.test[127.0.0.3]", [("MX", "plain.test"), ("A", "plain.test")]),
        # direct.test's MX is mx2 (127.0.0.3); [direct.test] is its own A record.
        ("[direct.test]", "direct.test[127.0.0.2]", [("A", "direct.test")]),
    ],
    ids=["no-mx-falls-back-to-the-domain-address", "bracketed-host-gets-no-mx-lookup"],
)
async def test_mx_lookup_unless_bracketed(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int, nexthop: str, relay: str,
    lookups: list[tuple[str, str]],
) -> None:
    delivery = await send(settings_for(dns), f"{nexthop}:{port}")
    assert_sent_via(delivery, f"{relay}:{port}", sinks)
    assert [q for q in dns.queries() if q[0] in ("MX", "A")] == lookups


@pytest.mark.parametrize("domain", ["self.test", "selfprimary.test"])
async def test_best_mx_is_me_loops_back(dns: DnsServer, sinks: dict[str, SmtpSink],
                                        domain: str) -> None:
    (result,) = (await send(settings_for(dns), domain)).outcomes
    assert (result.status, result.dsn) == ("bounced", "5.4.6")
    assert result.reply == f"mail for {domain} loops back to myself"
    assert sent_to(sinks) == []


async def test_me_as_backup_mx_is_skipped(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int
) -> None:
    delivery = await send(settings_for(dns), f"selfbackup.test:{port}")
    assert_sent_via(delivery, f"mx1.example.test[127.0.0.2]:{port}", sinks)


async def test_me_by_address_loops_back(dns: DnsServer) -> None:
    # mx1's address is one this host is reached at (proxy_interfaces).
    settings = settings_for(dns, proxy_interfaces="127.0.0.2")
    (result,) = (await send(settings, "example.test")).outcomes
    assert (result.dsn, result.reply) == ("5.4.6", "mail for example.test loops back to myself")


async def test_bracketed_myhostname_loops_back(dns: DnsServer) -> None:
    (result,) = (await send(settings_for(dns), f"[{MYHOSTNAME}]")).outcomes
    assert result.dsn == "5.4.6"


@pytest.mark.parametrize("switch", [{"smtp_dns_support_level": "disabled"},
                                    {"disable_dns_lookups": "yes"}])
async def test_dns_disabled_means_native_lookups_and_no_mx(
    dns: DnsServer, port: int, switch: dict[str, str]
) -> None:
    settings = settings_for(dns, **switch)
    assert not settings.dns_enabled
    with SmtpSink("127.0.0.1", port) as local:
        delivery = await send(settings, f"localhost:{port}")  # /etc/hosts, never DNS
    assert delivery.outcomes[0].status == "sent", delivery
    assert len(local.messages) == 1
    assert dns.queries() == []


async def test_dns_support_level_wins_over_disable_dns_lookups() -> None:
    settings = settings_for(None, smtp_dns_support_level="enabled", disable_dns_lookups=True)
    assert settings.dns_enabled


async def test_native_host_lookup_for_mx_hosts(dns: DnsServer, port: int) -> None:
    with SmtpSink("127.0.0.1", port) as local:
        # MX through DNS, the MX host "localhost" through getaddrinfo.
        native = await send(settings_for(dns, smtp_host_lookup="native"), f"native.test:{port}")
        # "dns, native": DNS cannot answer for localhost (REFUSED, try again).
        both = await send(settings_for(dns, smtp_host_lookup="dns, native"),
                          f"native.test:{port}")
        # "dns" only: the same failure, and nothing to fall back on.
        dns_only = await send(settings_for(dns), f"native.test:{port}")
    assert native.outcomes[0].status == "sent"
    assert len(local.messages) == 1
    assert both.outcomes[0].dsn == "4.4.3"
    assert dns_only.outcomes[0].dsn == "4.4.3"
    assert "name=localhost type=" in dns_only.outcomes[0].reply


async def test_dns_then_native_for_hosts_dns_does_not_know(
    make_dns: Callable[..., DnsServer], port: int
) -> None:
    # localhost is NXDOMAIN in this zone, so "dns, native" asks getaddrinfo.
    server = make_dns({"domains": ["test", "localhost"],
                       "mx": {"native.test": [(10, "localhost")]}})
    with SmtpSink("127.0.0.1", port) as local:
        both = await send(settings_for(server, smtp_host_lookup="dns, native"),
                          f"native.test:{port}")
        dns_only = await send(settings_for(server), f"native.test:{port}")
    assert both.outcomes[0].status == "sent"
    assert len(local.messages) == 1
    assert (dns_only.outcomes[0].dsn, dns_only.outcomes[0].status) == ("5.4.4", "bounced")


async def test_mx_session_limit_caps_soft_failures(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int
) -> None:
    busy = "450 4.2.1 <bob@dest.test>: Mailbox busy"
    sinks["127.0.0.2"].handler.rcpt_replies["bob@dest.test"] = busy
    sinks["127.0.0.3"].handler.rcpt_replies["bob@dest.test"] = busy
    capped = await send(settings_for(dns), f"three.test:{port}")  # smtp_mx_session_limit=2
    (result,) = capped.outcomes
    assert (result.status, result.dsn) == ("deferred", "4.2.1")
    assert result.reply.startswith("host mx2.example.test[127.0.0.3] said: 450 4.2.1")
    assert capped.relay == f"mx2.example.test[127.0.0.3]:{port}"
    assert sent_to(sinks) == []

    unlimited = await send(settings_for(dns, smtp_mx_session_limit=0), f"three.test:{port}")
    assert unlimited.outcomes[0].status == "sent"
    assert unlimited.relay == f"mx3.example.test[127.0.0.4]:{port}"
    assert sent_to(sinks) == ["127.0.0.4"]


async def test_soft_failures_move_on_but_hard_ones_stay(
    dns: DnsServer, sinks: dict[str, SmtpSink], port: int
) -> None:
    first = sinks["127.0.0.2"].handler
    first.rcpt_replies["later@dest.test"] = "451 4.3.0 try elsewhere"
    first.rcpt_replies["gone@dest.test"] = "550 5.1.1 <gone@dest.test>: no such user"
    delivery = await send(settings_for(dns), f"example.test:{port}",
                          ("ok@dest.test", "later@dest.test", "gone@dest.test"))
    ok, later, gone = delivery.outcomes
    assert (ok.status, later.status, gone.status) == ("sent", "sent", "bounced")
    assert [m.recipients for m in sinks["127.0.0.2"].messages] == [["ok@dest.test"]]
    assert [m.recipients for m in sinks["127.0.0.3"].messages] == [["later@dest.test"]]


def _resolver(dns: DnsServer, **policy: Any) -> DnsResolver:
    return DnsResolver(make_dns_client([dns.nameserver], 2.0),
                       DnsPolicy(myhostname=MYHOSTNAME, ipv6=False, **policy))


async def test_equal_preferences_are_shuffled_and_address_limit(dns: DnsServer) -> None:
    orders = set()
    for seed in range(12):
        resolver = DnsResolver(make_dns_client([dns.nameserver], 2.0),
                               DnsPolicy(myhostname=MYHOSTNAME, ipv6=False),
                               rng=random.Random(seed))
        found = await resolver.resolve(parse_nexthop("equal.test"))
        orders.add(tuple(a.ip for a in found))
    assert len(orders) > 1
    assert all(sorted(order) == sorted(HOSTS) for order in orders)

    fixed = _resolver(dns, randomize=False)
    found = await fixed.resolve(parse_nexthop("three.test"))
    assert [a.hostname for a in found] == [
        "mx1.example.test", "mx2.example.test", "mx3.example.test"]
    limited = _resolver(dns, randomize=False, address_limit=2)
    found = await limited.resolve(parse_nexthop("three.test"))
    assert [a.ip for a in found] == ["127.0.0.2", "127.0.0.3"]
