"""The shared test helpers: swaks fails (never skips) without its peer or its
TLS support, and the resolver guard keeps tests off the machine's resolver."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from postfleet.core.testing import swaks as swaks_module
from postfleet.core.testing.resolver_guard import SystemResolverGuard
from postfleet.core.testing.swaks import MISSING, NO_TLS, require_tls, swaks, swaks_binary

FAKE_SWAKS = """#!/bin/sh
if [ "$1" = "--support" ]; then
    echo "=== Basic AUTH supported"
    echo "*** TLS not available: requires Net::SSLeay"
    exit 1
fi
echo "fake swaks $*"
"""


@pytest.fixture
def fake_swaks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A swaks without TLS support, alone on PATH."""
    script = tmp_path / "swaks"
    script.write_text(FAKE_SWAKS)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return script


async def test_missing_swaks_fails_the_test(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=re.escape(MISSING)):
        await swaks(25, "--from", "a@b.example")


@pytest.mark.slow
async def test_tls_options_need_swaks_tls_support(fake_swaks: Path) -> None:
    for option in ("--tls", "-tls", "--tlsc", "--tls-on-connect", "--tls-verify"):
        with pytest.raises(pytest.fail.Exception, match=re.escape(NO_TLS)):
            await swaks(25, option)
    # Without a TLS option the same swaks runs, against 127.0.0.1:PORT.
    code, out = await swaks(2525, "--from", "a@b.example", "--body", "--tls in a body")
    assert (code, out) == (0, "fake swaks --server 127.0.0.1 --port 2525 --from a@b.example "
                              "--body --tls in a body\n")


@pytest.mark.slow
def test_the_installed_swaks_speaks_tls() -> None:
    # What scripts/install-peers makes sure of; the TLS tests need it.
    require_tls(swaks_binary())
    assert swaks_module.TLS_SUPPORTED in swaks_module._support(swaks_binary())


def test_the_resolver_guard_refuses_names_and_lets_numbers_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guard = SystemResolverGuard().install(monkeypatch)
    assert socket.getaddrinfo("127.0.0.1", 25)[0][4] == ("127.0.0.1", 25)
    assert socket.getaddrinfo(None, 25)
    assert socket.gethostbyname("192.0.2.1") == "192.0.2.1"
    assert socket.getnameinfo(("127.0.0.1", 25), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
                              ) == ("127.0.0.1", "25")
    assert guard.asked == []
    for ask in (lambda: socket.getaddrinfo("localhost", 25),
                lambda: socket.gethostbyname("example.test"),
                lambda: socket.gethostbyaddr("127.0.0.1"),
                lambda: socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)):
        with pytest.raises(socket.gaierror):
            ask()
    socket.getfqdn("host.example.test")  # swallows the error, but was caught asking
    assert guard.asked == [
        "getaddrinfo('localhost')", "gethostbyname('example.test')",
        "gethostbyaddr('127.0.0.1')", "getnameinfo(('127.0.0.1', 0))",
        "gethostbyaddr('host.example.test')"]
