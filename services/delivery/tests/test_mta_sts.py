"""MTA-STS (RFC 8461) end to end with real peers: dnsmasq serving the MX and
``_mta-sts`` TXT records, a real HTTPS server (Python's http.server under
TLS, on port 443 of a loopback address of its own, with a certificate from
the test's CA) serving the policy, and aiosmtpd as the MX host. enforce
defers on a bad certificate or an unlisted MX, testing does not, policies
are cached by id, and an unreachable policy is no policy."""

from __future__ import annotations

import contextlib
import random
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.pki import TestCa
from postfleet.core.testing.sink import SmtpSink
from postfleet.delivery.mtasts import parse_policy, parse_txt
from postfleet.delivery.pool import SessionPool
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.smtp import SmtpTransport
from postfleet.delivery.store import StoredMessage

from .conftest import only, send, tls_settings

DOMAIN = "sts.test"
LISTED = "mode: enforce\nmx: *.tls.test\nmax_age: 86400\n"


class PolicyServer:
    """An HTTPS server for https://mta-sts.<domain>/.well-known/mta-sts.txt on
    port 443 of a loopback address nothing else uses."""

    def __init__(self, cert: tuple[Path, Path]) -> None:
        self.body = "version: STSv1\n" + LISTED
        self.status = 200
        self.requests: list[tuple[str, str]] = []  # (Host, path)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.headers.get("Host", ""), self.path))
                payload = server.body.encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        for _ in range(20):
            self.ip = "127." + ".".join(str(random.randint(2, 254)) for _ in range(3))
            with contextlib.suppress(OSError):
                self.httpd = ThreadingHTTPServer((self.ip, 443), Handler)
                break
        else:
            raise RuntimeError("no loopback address with port 443 free (tests run as root)")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, cert))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def policy_certs(test_ca: TestCa, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    other = TestCa(tmp_path_factory.mktemp("other-ca"), "another CA")
    return {"good": test_ca.issue("mta-sts", dns=[f"mta-sts.{DOMAIN}"]),
            "untrusted": other.issue("mta-sts", dns=[f"mta-sts.{DOMAIN}"])}


@pytest.fixture
def policy_server(policy_certs: dict[str, Any]) -> Iterator[Callable[[str], PolicyServer]]:
    started: list[PolicyServer] = []

    def start(cert: str = "good") -> PolicyServer:
        server = PolicyServer(policy_certs[cert])
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def zone(https_ip: str, policy_id: str | None = "20260101") -> dict[str, Any]:
    txt = {f"_mta-sts.{DOMAIN}": f"v=STSv1; id={policy_id}"} if policy_id else {}
    return {
        "mx": {DOMAIN: [(10, "mx.tls.test")]},
        "hosts": {"mx.tls.test": "127.0.0.1", f"mta-sts.{DOMAIN}": https_ip},
        "txt": txt,
    }


def sts_settings(dns: DnsServer, test_ca: TestCa, **overrides: Any) -> DeliverySettings:
    return tls_settings(dns, smtp_mta_sts_enable=True, smtp_tls_CAfile=str(test_ca.ca_file),
                        smtp_mta_sts_timeout=5.0, **overrides)


World = tuple[DnsServer, PolicyServer, DeliverySettings]


@pytest.fixture
def world(
    make_dns: Callable[..., DnsServer], policy_server: Callable[[str], PolicyServer],
    test_ca: TestCa,
) -> World:
    """dnsmasq, the policy server (enforce, *.tls.test) and settings using both."""
    https = policy_server("good")
    dns = make_dns(zone(https.ip))
    return dns, https, sts_settings(dns, test_ca)


async def test_enforce_delivers_over_verified_tls_to_a_listed_mx(
    world: World, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
    maillog: Callable[[], list[str]],
) -> None:
    dns, https, settings = world
    sink = serve(certs["good"])
    delivery = await send(settings, f"{DOMAIN}:{sink.port}")
    assert only(delivery)[:2] == ("sent", "2.0.0")
    assert [m.tls for m in sink.messages] == [True]
    assert https.requests == [(f"mta-sts.{DOMAIN}", "/.well-known/mta-sts.txt")]
    assert ("TXT", f"_mta-sts.{DOMAIN}") in dns.queries()
    assert any("Verified TLS connection established to mx.tls.test[127.0.0.1]" in line
               for line in maillog())


async def test_enforce_defers_on_a_bad_certificate_and_testing_does_not(
    world: World, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
) -> None:
    dns, https, settings = world
    sink = serve(certs["wrong"])
    assert only(await send(settings, f"{DOMAIN}:{sink.port}")) == (
        "deferred", "4.7.5", "Server certificate not verified")
    assert sink.messages == []
    # testing mode, under a new policy id: delivered as without a policy.
    https.body = "version: STSv1\nmode: testing\nmx: *.tls.test\nmax_age: 86400\n"
    dns.restart(zone(https.ip, "20260102"))
    assert only(await send(settings, f"{DOMAIN}:{sink.port}"))[0] == "sent"
    assert len(https.requests) == 2


async def test_enforce_defers_when_no_mx_host_is_listed(
    world: World, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
) -> None:
    _dns, https, settings = world
    https.body = "version: STSv1\nmode: enforce\nmx: mx.elsewhere.test\nmax_age: 86400\n"
    sink = serve(certs["good"])
    assert only(await send(settings, f"{DOMAIN}:{sink.port}")) == (
        "deferred", "4.7.5", f"MX host mx.tls.test is not listed in the MTA-STS policy of "
        f"{DOMAIN}")
    assert sink.messages == []


async def test_policies_are_cached_by_id_and_outlive_their_txt_record(
    world: World, serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]],
) -> None:
    dns, https, settings = world
    sink = serve(certs["wrong"])
    # One transport (one cache) for three deliveries.
    pool = SessionPool(cache_time_limit=0, reuse_time_limit=0)
    transport = SmtpTransport(settings, pool)
    job = delivery_pb2.Job(queue_id="4F2A1", transport="smtp", nexthop=f"{DOMAIN}:{sink.port}")
    job.recipients.add(id=1, address="bob@sts.test")
    message = StoredMessage("4F2A1", "alice@origin.test", b"Subject: x\r\n\r\nhi\r\n")
    try:
        for _ in range(2):
            assert (await transport.deliver(job, message)).outcomes[0].dsn == "4.7.5"
        assert len(https.requests) == 1  # same id: the cached policy
        dns.restart(zone(https.ip, policy_id=None))  # the TXT record is gone
        assert (await transport.deliver(job, message)).outcomes[0].dsn == "4.7.5"
        assert len(https.requests) == 1  # still the cached policy, still enforced
    finally:
        await pool.close()
        await transport.close()


@pytest.mark.parametrize("problem", ["untrusted certificate", "HTTP 404", "not a policy"])
async def test_a_policy_that_cannot_be_had_is_no_policy(
    make_dns: Callable[..., DnsServer], policy_server: Callable[[str], PolicyServer],
    serve: Callable[..., SmtpSink], certs: dict[str, tuple[Path, Path]], test_ca: TestCa,
    problem: str,
) -> None:
    https = policy_server("untrusted" if problem == "untrusted certificate" else "good")
    if problem == "HTTP 404":
        https.status = 404
    elif problem == "not a policy":
        https.body = "<html>hello</html>"
    dns = make_dns(zone(https.ip))
    sink = serve(certs["wrong"])
    assert only(await send(sts_settings(dns, test_ca), f"{DOMAIN}:{sink.port}"))[0] == "sent"
    assert len(sink.messages) == 1


def test_txt_and_policy_parsing() -> None:
    assert parse_txt("v=STSv1; id=20160831085700Z;") == "20160831085700Z"
    assert parse_txt("v=STSv1; id=bad-id") is None
    assert parse_txt("v=spf1 -all") is None
    assert parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                        "mx: *.example.net\r\nmax_age: 604800\r\n") == (
        "enforce", 604800, ("mail.example.com", "*.example.net"))
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n")[1] == 31557600
    for bad in ("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                "version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n"):
        with pytest.raises(ValueError):
            parse_policy(bad)
