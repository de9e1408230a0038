"""pytest fixtures shared by every test suite (loaded with ``-p``).

- ``nats_server``: a fresh NATS + JetStream on a free loopback port.
- ``database_url``: parametrised over SQLite and PostgreSQL; a new database
  each test, migrated to head.
- ``smtp_sink``: a real SMTP server standing for the next hop.
- ``make_cluster``: every role as a real process on those.
- ``make_dns``: ``make_dns(zone)`` starts dnsmasq serving that zone on a free
  loopback port (see testing/dns.py); ``.nameserver`` is "127.0.0.1:PORT".
- ``own_postgres``: a PostgreSQL server of the test's own, to stop and start.
- ``make_dovecot_auth``: ``make_dovecot_auth(users_file)`` starts Dovecot's
  auth service on that passwd-file (testing/dovecot_auth.py); ``.sasl_path``
  is the smtpd_sasl_path value.
- ``test_ca``: a certificate authority of the test's own (testing/pki.py),
  to issue server certificates with the names a TLS test needs.
- ``spamd`` / ``clamd``: SpamAssassin's spamd and ClamAV's clamd (test
  signatures only) on free loopback ports (testing/scanners.py).
- ``make_opendkim``: ``make_opendkim(domain, selector)`` starts OpenDKIM
  signing for that domain (testing/opendkim.py); ``.socket`` is the
  smtpd_milters value.
- ``postfix_sink`` / ``private_postfix``: Debian's Postfix as a peer
  (testing/postfix.py): smtp-sink (DSN offered) on a free port, and
  ``private_postfix(main)`` starting a Postfix instance of the test's own.
- ``no_system_resolver``: the test fails if it asked the machine's resolver
  (testing/resolver_guard.py); a suite's conftest may make it autouse.

Every test that starts a process carries the ``slow`` marker (``-m "not
slow"`` is the quick loop): tests using a fixture that starts one are
marked here at collection, and a test that starts a process without the
marker fails, naming the program, so the marker cannot silently go missing.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from postfleet.core.testing.cluster import LOOPBACK_NOWHERE, Cluster
from postfleet.core.testing.databases import fresh_postgres, sqlite_url
from postfleet.core.testing.dns import DnsServer
from postfleet.core.testing.dovecot_auth import DovecotAuth
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.opendkim import OpenDkim
from postfleet.core.testing.peers import peer_binary
from postfleet.core.testing.pki import TestCa
from postfleet.core.testing.postfix import PostfixSink, PrivatePostfix
from postfleet.core.testing.resolver_guard import SystemResolverGuard
from postfleet.core.testing.scanners import Clamd, Spamd
from postfleet.core.testing.sink import SmtpSink

# Fixtures that start a process (directly or through another fixture).
PROCESS_FIXTURES = {"nats_server", "make_cluster", "make_dns", "own_postgres",
                    "make_dovecot_auth", "test_ca", "spamd", "clamd", "make_opendkim",
                    "postfix_sink", "private_postfix"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _processes_need_the_slow_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("slow") is not None:
        return

    def guarded(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        program = args if isinstance(args, str | bytes) else next(iter(args))
        raise AssertionError(f"{request.node.nodeid} starts a process ({program!r}): "
                             "mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    from postfleet.core.db.engine import create_engine
    from postfleet.core.db.migrate import upgrade

    async def migrated(url: str) -> str:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        return url

    if request.param == "sqlite":
        yield await migrated(sqlite_url(tmp_path))
    else:
        async with fresh_postgres() as url:
            yield await migrated(url)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    from postfleet.core.db.engine import create_engine
    from postfleet.core.db.migrate import upgrade

    async with fresh_postgres() as url:
        engine = create_engine(url)
        await upgrade(engine)
        await engine.dispose()
        yield url


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="session")
def refusing_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A name server that knows nothing and says so at once (an empty
    dnsmasq answers REFUSED: a temporary failure, as a dead server is);
    clusters ask it unless a test passes its own. Without dnsmasq, a closed
    loopback port: the same answers, each after the lookup's whole lifetime."""
    try:
        peer_binary("dnsmasq", "dnsmasq")
    except RuntimeError:
        yield LOOPBACK_NOWHERE
        return
    with DnsServer(tmp_path_factory.mktemp("refusing-dns"), {"domains": []}) as dns:
        yield dns.nameserver


@pytest.fixture
def make_cluster(
    tmp_path: Path, nats_server: NatsServer, refusing_dns: str
) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(database_url: str, config: dict[str, Any] | None = None,
             extra_roles: tuple[str, ...] = (), **env: str) -> Cluster:
        cluster = Cluster(
            tmp_path / f"cluster{len(made)}", database_url, nats_server.url,
            config=config or {}, env=env, extra_roles=extra_roles,
            nameserver=refusing_dns,
        )
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def spamd(tmp_path: Path) -> Iterator[Spamd]:
    with Spamd(tmp_path / "spamd") as server:
        yield server


@pytest.fixture
def clamd(tmp_path: Path) -> Iterator[Clamd]:
    with Clamd(tmp_path / "clamd") as server:
        yield server


class _Peer(Protocol):
    def start(self) -> Any: ...
    def stop(self) -> Any: ...


P = TypeVar("P", bound=_Peer)


@contextlib.contextmanager
def _peers(tmp_path: Path, name: str, build: Callable[..., P]) -> Iterator[Callable[..., P]]:
    """A factory of started peers, each in its own directory, all stopped after."""
    started: list[P] = []

    def make(*args: Any) -> P:
        server = build(tmp_path / f"{name}{len(started)}", *args)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def make_dns(tmp_path: Path) -> Iterator[Callable[..., DnsServer]]:
    with _peers(tmp_path, "dns", lambda d, zone=None: DnsServer(d, zone or {})) as make:
        yield make


@pytest.fixture
def postfix_sink(tmp_path: Path) -> Iterator[PostfixSink]:
    with PostfixSink(tmp_path / "smtp-sink") as sink:
        yield sink


@pytest.fixture
def private_postfix(tmp_path: Path) -> Iterator[Callable[..., PrivatePostfix]]:
    with _peers(tmp_path, "postfix", PrivatePostfix) as make:
        yield make


@pytest.fixture
def make_dovecot_auth(tmp_path: Path) -> Iterator[Callable[[Path], DovecotAuth]]:
    with _peers(tmp_path, "dovecot-auth", DovecotAuth) as make:
        yield make


@pytest.fixture
def make_opendkim(tmp_path: Path) -> Iterator[Callable[..., OpenDkim]]:
    with _peers(tmp_path, "opendkim", OpenDkim) as make:
        yield make


@pytest.fixture
async def own_postgres() -> AsyncIterator[Any]:
    """A PostgreSQL server of this test's own (``PgCluster``), migrated, that
    the test may stop and start; ``.url()`` is the queue store's URL."""
    from postfleet.core.db.engine import create_engine
    from postfleet.core.db.migrate import upgrade
    from postfleet.core.testing.pgcluster import PgCluster

    cluster = PgCluster().init().start()
    try:
        engine = create_engine(cluster.url())
        await upgrade(engine)
        await engine.dispose()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def no_system_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SystemResolverGuard]:
    guard = SystemResolverGuard().install(monkeypatch)
    yield guard
    assert not guard.asked, (
        f"the test asked the machine's resolver: {guard.asked}; use make_dns and "
        "dns_nameservers, or numeric addresses")
