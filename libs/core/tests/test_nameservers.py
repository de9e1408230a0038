"""dns_nameservers entries and the dnspython client made from them."""

from __future__ import annotations

import pytest

from postfleet.core.nameservers import check_nameservers, dns_client, parse_nameserver


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.53", ("192.0.2.53", 53)),
        (" 127.0.0.1:5353 ", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text", ["dns.example", "dns.example:53", "127.0.0.1:0", "127.0.0.1:65536",
             "127.0.0.1:dns", "[::1]x", "[::1]:", ""])
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_nameserver(text)


def test_check_nameservers_names_the_bad_entry() -> None:
    assert check_nameservers(["127.0.0.1", "[::1]:53"]) == ["127.0.0.1", "[::1]:53"]
    with pytest.raises(ValueError, match=r"'resolver\.example'"):
        check_nameservers(["127.0.0.1", "resolver.example"])


def test_dns_client_asks_only_the_given_servers() -> None:
    client = dns_client(["127.0.0.1:5353", "[::1]"], lifetime=5)
    assert [(ns.address, ns.port) for ns in client.nameservers] == [
        ("127.0.0.1", 5353), ("::1", 53)]
    assert client.search == [] and client.lifetime == 5 and client.timeout == 3
    with pytest.raises(ValueError):
        dns_client([], lifetime=5)
