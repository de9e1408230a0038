"""smtpd_peername_lookup's two resolvers: the system's (getnameinfo and
getaddrinfo, replaced here by stand-ins, since tests never ask the machine's
resolver) and dnspython on dns_nameservers (a loopback dnsmasq). Either way a
name counts only when it resolves back to the client's address."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import dns.reversename
import pytest

from postfleet.core.nameservers import dns_client
from postfleet.core.sockets import free_port
from postfleet.ingress_smtp import peername
from postfleet.ingress_smtp.peername import (
    DnsClientNames,
    client_name_lookup,
    system_client_name,
)


def test_the_default_is_the_system_resolver() -> None:
    assert client_name_lookup([]) is system_client_name
    assert isinstance(client_name_lookup(["127.0.0.1:5353"]), DnsClientNames)


@pytest.fixture
def system_resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A system resolver that knows 127.0.0.1 as client.test; ``answers`` edits it."""
    answers: dict[str, Any] = {"reverse": "client.test", "client.test": "127.0.0.1"}

    def getnameinfo(sockaddr: tuple[str, int], flags: int) -> tuple[str, str]:
        assert flags & socket.NI_NAMEREQD
        if answers["reverse"] is None:
            raise socket.gaierror(socket.EAI_NONAME, "no PTR")
        return answers["reverse"], "0"

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (answers[host], 0))]

    monkeypatch.setattr(socket, "getnameinfo", getnameinfo)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


async def test_system_resolver_forward_confirmed(system_resolver: dict[str, Any]) -> None:
    assert await system_client_name("127.0.0.1") == "client.test"
    system_resolver["client.test"] = "192.0.2.7"  # the name resolves elsewhere
    assert await system_client_name("127.0.0.1") == "unknown"
    system_resolver["reverse"] = "gone.test"  # the name does not resolve
    assert await system_client_name("127.0.0.1") == "unknown"
    system_resolver["reverse"] = None  # no PTR
    assert await system_client_name("127.0.0.1") == "unknown"
    assert await system_client_name("") == "unknown"


async def test_dns_nameservers_ipv6_client(make_dns) -> None:
    server = make_dns({"hosts": {"v6.postfleet.test": "2001:db8::7"}})
    lookup = client_name_lookup([server.nameserver])
    assert await lookup("2001:db8::7") == "v6.postfleet.test"
    reverse = dns.reversename.from_address("2001:db8::7").to_text(omit_final_dot=True)
    assert server.queries() == [("PTR", reverse), ("AAAA", "v6.postfleet.test")]
    # An address the zone does not know stays unknown.
    assert await lookup("192.0.2.99") == "unknown"


async def test_a_silent_name_server_leaves_the_client_unknown() -> None:
    # Nothing answers on that port: the lookup gives up, it does not hang.
    lookup = DnsClientNames(dns_client([f"127.0.0.1:{free_port()}"], 0.3))
    assert await asyncio.wait_for(lookup("127.0.0.1"), peername.NAME_LOOKUP_TIMEOUT) == "unknown"
