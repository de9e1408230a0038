"""Pure pieces of the delivery role: nexthop syntax, DATA framing, SMTP paths,
settings."""

from __future__ import annotations

import pytest

from postfleet.core.routing.nexthop import Nexthop, NexthopError, parse_nexthop
from postfleet.delivery.hostlookup import parse_nameserver
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.smtp import dot_stuff, smtp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[127.0.0.1]:2526", Nexthop("127.0.0.1", 2526, True)),
        ("[relay.univ.es]", Nexthop("relay.univ.es", 25, True)),
        ("smtp.univ.es:587", Nexthop("smtp.univ.es", 587, False)),
        ("smtp.univ.es", Nexthop("smtp.univ.es", 25, False)),
        ("[2001:db8::1]:25", Nexthop("2001:db8::1", 25, True)),
        ("[ipv6:2001:db8::1]", Nexthop("2001:db8::1", 25, True)),
        ("[mx.test]:submission", Nexthop("mx.test", 587, True)),
        (" [mx.test]:2525 ", Nexthop("mx.test", 2525, True)),
    ],
)
def test_parse_nexthop(text: str, expected: Nexthop) -> None:
    assert parse_nexthop(text) == expected


@pytest.mark.parametrize(
    "text", ["", "[mx.test", "[mx.test]x", "mx.test:", "mx.test:99999", "2001:db8::1",
             "[]:25", "mx.test:nosuchservice"],
)
def test_bad_nexthop(text: str) -> None:
    with pytest.raises(NexthopError):
        parse_nexthop(text)


def test_nexthop_str_is_the_pool_key() -> None:
    assert str(parse_nexthop("[mx.test]")) == "[mx.test]:25"
    assert str(parse_nexthop("mx.test:25")) == "mx.test:25"


def test_dot_stuffing_once_and_crlf_kept() -> None:
    body = b".a\r\n..b\r\nc.\r\n.\r\n"
    assert dot_stuff(body) == b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"
    assert dot_stuff(b"no dots\r\n") == b"no dots\r\n.\r\n"
    assert dot_stuff(b"unterminated") == b"unterminated\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("", "<>"),
        ("bob@dest.test", "<bob@dest.test>"),
        ("first.last+tag@dest.test", "<first.last+tag@dest.test>"),
        ("john doe@dest.test", '<"john doe"@dest.test>'),
        ('"quoted"@dest.test', '<"quoted"@dest.test>'),
        ("a..b@dest.test", '<"a..b"@dest.test>'),
        ("postmaster", "<postmaster>"),
        ("josé@dest.test", "<josé@dest.test>"),
    ],
)
def test_smtp_path(address: str, path: str) -> None:
    assert smtp_path(address) == path


def test_settings_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTFLEET_CONFIG", raising=False)
    monkeypatch.setenv("POSTFLEET_TRANSPORTS", "smtp, relay")
    monkeypatch.setenv("POSTFLEET_SMTP_CONNECT_TIMEOUT", "1m")
    monkeypatch.setenv("POSTFLEET_MYHOSTNAME", "mx.univ.es")
    expected = {
        "transports": ["smtp", "relay"], "smtp_connect_timeout": 60.0,
        "smtp_helo_name": "mx.univ.es", "smtp_helo_timeout": 300.0,
        "smtp_data_done_timeout": 600.0, "default_process_limit": 100,
        "smtp_connection_cache_time_limit": 2.0, "smtp_connection_reuse_time_limit": 300.0,
        "delivery_ack_wait": 30.0,
    }
    assert DeliverySettings().model_dump(include=set(expected)) == expected
    monkeypatch.setenv("POSTFLEET_TRANSPORTS", '["smtp"]')
    monkeypatch.setenv("POSTFLEET_SMTP_HELO_NAME", "out.$myhostname")
    s = DeliverySettings()
    assert s.transports == ["smtp"]
    assert s.smtp_helo_name == "out.mx.univ.es"


def test_dns_and_mailbox_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTFLEET_CONFIG", raising=False)
    monkeypatch.setenv("POSTFLEET_MYHOSTNAME", "mx.univ.es")
    s = DeliverySettings()
    assert s.transports == ["smtp", "relay", "lmtp", "local", "virtual", "error", "discard"]
    assert (s.smtp_mx_address_limit, s.smtp_mx_session_limit) == (5, 2)
    assert s.smtp_host_lookup == ["dns"]
    assert s.dns_enabled and s.dns_nameservers == []
    assert s.lmtp_lhlo_name == "mx.univ.es"
    assert (s.lmtp_tcp_port, s.lmtp_connect_timeout, s.lmtp_data_done_timeout) == (24, 0, 600)
    assert (s.mailbox_size_limit, s.virtual_mailbox_limit) == (51200000, 51200000)
    assert (s.local_user_policy, s.virtual_user_policy) == ("existing", "create")
    monkeypatch.setenv("POSTFLEET_DNS_NAMESERVERS", "127.0.0.1:5353, [::1]:53")
    monkeypatch.setenv("POSTFLEET_SMTP_HOST_LOOKUP", "dns, native")
    monkeypatch.setenv("POSTFLEET_DISABLE_DNS_LOOKUPS", "yes")
    monkeypatch.setenv("POSTFLEET_LOCAL_RECIPIENTS", "bob alice")
    s = DeliverySettings()
    assert s.dns_nameservers == ["127.0.0.1:5353", "[::1]:53"]
    assert s.smtp_host_lookup == ["dns", "native"]
    assert not s.dns_enabled
    assert s.local_recipients == ["bob", "alice"]
    monkeypatch.setenv("POSTFLEET_SMTP_DNS_SUPPORT_LEVEL", "dnssec")
    assert DeliverySettings().dns_enabled  # the level wins over the legacy switch
    monkeypatch.setenv("POSTFLEET_SMTP_HOST_LOOKUP", "nis")
    with pytest.raises(ValueError):
        DeliverySettings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
     ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53))],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


def test_nameserver_must_be_an_address() -> None:
    with pytest.raises(ValueError):
        parse_nameserver("ns.example.test")


def test_mail_and_rcpt_parameters_as_postfix_sends_them() -> None:
    """ENVID, RET, ORCPT and NOTIFY only to a server that offers DSN;
    SMTPUTF8 when asked for and offered, 5.6.7 when needed and not offered."""
    from postfleet.core.proto.delivery.v1 import delivery_pb2
    from postfleet.delivery.wire import mail_params, rcpt_params

    body = b"Subject: caf\xc3\xa9\r\n\r\nhi\r\n"
    dsn = {"dsn": "", "8bitmime": "", "smtputf8": ""}
    params, encoding, stop = mail_params(dsn, body, ["a@b.test"], "h[1.2.3.4]", smtputf8=True,
                                         ret="HDRS", envid="id+1 x")
    assert stop is None and encoding == "ascii"
    assert params == [b"SMTPUTF8", b"BODY=8BITMIME", b"ENVID=id+2B1+20x", b"RET=HDRS"]
    # No DSN offered: none of its parameters. A UTF-8 header needs SMTPUTF8
    # only when the sender asked for it.
    assert mail_params({"8bitmime": ""}, body, ["a@b.test"], "h", ret="HDRS")[0] == [
        b"BODY=8BITMIME"]
    _, _, stop = mail_params({"8bitmime": ""}, body, ["a@b.test"], "h[1.2.3.4]",
                             smtputf8=True)
    assert stop is not None and stop.dsn == "5.6.7"
    assert stop.reply == "SMTPUTF8 is required, but was not offered by host h[1.2.3.4]"
    rcpt = delivery_pb2.JobRecipient(address="u@b.test", orcpt="U@b.test", notify="NEVER")
    assert rcpt_params(dsn, rcpt) == b" ORCPT=rfc822;U@b.test NOTIFY=NEVER"
    given = delivery_pb2.JobRecipient(address="u@b.test", dsn_orcpt="rfc822;x+y=z@b.test")
    assert rcpt_params(dsn, given) == b" ORCPT=rfc822;x+2By+3Dz@b.test"
    assert rcpt_params({}, rcpt) == b""
