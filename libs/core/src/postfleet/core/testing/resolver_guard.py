"""Keep tests off the machine's own resolver.

The machine's resolver is somebody else's server: a test that asks it
depends on what it answers today (and on the network). Name lookups in tests
go to a loopback dnsmasq (testing/dns.py, ``make_dns``) through a role's
``dns_nameservers`` instead. ``SystemResolverGuard`` replaces the socket
module's resolver calls: addresses written as numbers pass (nothing is asked
for them), every name or reverse lookup fails as an unknown name and is
recorded, and the ``no_system_resolver`` fixture (plugin.py) fails the test
that made one.

Postfix parameters: none.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest

_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")


def _numeric(host: object) -> bool:
    if host is None:
        return True  # getaddrinfo(None, port): the wildcard or loopback address
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return text == ""  # "" is INADDR_ANY to getaddrinfo/gethostbyname
    return True


class SystemResolverGuard:
    """Refuses and records every question for the system resolver."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self._real = {name: getattr(socket, name) for name in _LOOKUPS}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> SystemResolverGuard:
        for name in _LOOKUPS:
            monkeypatch.setattr(socket, name, getattr(self, name))
        return self

    def _refuse(self, what: str) -> socket.gaierror:
        self.asked.append(what)
        return socket.gaierror(socket.EAI_NONAME, f"system resolver off in tests: {what}")

    def getaddrinfo(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        return self._forward("getaddrinfo", host, *args, **kwargs)

    def gethostbyname(self, host: str) -> Any:
        return self._forward("gethostbyname", host)

    def gethostbyname_ex(self, host: str) -> Any:
        return self._forward("gethostbyname_ex", host)

    def _forward(self, call: str, host: Any, *args: Any, **kwargs: Any) -> Any:
        if _numeric(host):
            return self._real[call](host, *args, **kwargs)
        raise self._refuse(f"{call}({host!r})")

    def gethostbyaddr(self, host: str) -> Any:
        raise self._refuse(f"gethostbyaddr({host!r})")

    def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        if flags & socket.NI_NUMERICHOST:
            return self._real["getnameinfo"](sockaddr, flags)
        raise self._refuse(f"getnameinfo({sockaddr!r})")
