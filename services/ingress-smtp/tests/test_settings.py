"""IngressSettings: Postfix names and defaults, env/YAML, listener -o overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from postfleet.ingress_smtp.settings import IngressSettings, Listener


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("POSTFLEET_"):
            monkeypatch.delenv(name)


def test_postfix_defaults() -> None:
    s = IngressSettings(myhostname="mx.example")
    assert s.message_size_limit == 10240000
    assert s.smtpd_recipient_limit == 1000
    assert s.smtpd_timeout == 300
    assert s.smtpd_hard_error_limit == 20
    assert s.smtpd_soft_error_limit == 10
    assert s.line_length_limit == 2048
    assert s.smtpd_forbid_bare_newline == "normalize"
    assert s.smtpd_forbid_bare_newline_exclusions == ["$mynetworks"]
    assert s.smtpd_relay_restrictions == [
        "permit_mynetworks", "permit_sasl_authenticated", "reject_unauth_destination"]
    assert s.banner("mx.example") == "mx.example ESMTP postfleet"
    assert [(x.name, x.address, x.port) for x in s.listeners] == [("smtp", "127.0.0.1", 2525)]
    assert s.cleanup_address == "127.0.0.1:10027"
    # TLS and PROXY: off unless asked for, as in Postfix.
    assert s.smtpd_tls_security_level == "" and s.tls_level() == "none"
    assert s.smtpd_tls_cert_file == "" and s.smtpd_tls_key_file == "$smtpd_tls_cert_file"
    assert s.smtpd_tls_wrappermode is False
    assert s.smtpd_tls_protocols == s.smtpd_tls_mandatory_protocols == ">=TLSv1.2"
    assert s.smtpd_starttls_timeout == 300
    assert s.smtpd_upstream_proxy_protocol == "" and s.proxy_timeout() is None
    assert s.smtpd_upstream_proxy_timeout == 5
    # postfleet's: smtpd_peername_lookup asks the system resolver unless told otherwise.
    assert s.smtpd_peername_lookup is True and s.dns_nameservers == []


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "POSTFLEET_LISTENERS",
        '[{"name":"smtp","address":"0.0.0.0","port":25},'
        ' {"name":"submission","port":587,"overrides":{"smtpd_recipient_limit":50}}]',
    )
    # Set, so that no default asks the machine's resolver for its name (getfqdn).
    monkeypatch.setenv("POSTFLEET_MYHOSTNAME", "mx.example")
    monkeypatch.setenv("POSTFLEET_SMTPD_TIMEOUT", "5m")
    monkeypatch.setenv("POSTFLEET_CLEANUP_TIMEOUT", "30s")
    monkeypatch.setenv("POSTFLEET_MESSAGE_SIZE_LIMIT", "1000")
    monkeypatch.setenv("POSTFLEET_SMTPD_RELAY_RESTRICTIONS",
                       "permit_mynetworks, reject_unauth_destination")
    monkeypatch.setenv("POSTFLEET_SMTPD_FORBID_BARE_NEWLINE", "yes")
    monkeypatch.setenv("POSTFLEET_DNS_NAMESERVERS", "127.0.0.1:5353, [::1]:53 192.0.2.53")
    s = IngressSettings()
    assert s.smtpd_timeout == 300 and s.cleanup_timeout == 30
    assert s.smtpd_relay_restrictions == ["permit_mynetworks", "reject_unauth_destination"]
    assert s.smtpd_forbid_bare_newline == "normalize"  # Postfix 3.9: yes = normalize
    assert s.dns_nameservers == ["127.0.0.1:5353", "[::1]:53", "192.0.2.53"]
    smtp, submission = s.listeners
    assert (smtp.address, smtp.port) == ("0.0.0.0", 25)
    assert s.params_for(smtp).smtpd_recipient_limit == 1000
    assert s.params_for(submission).smtpd_recipient_limit == 50
    assert s.params_for(submission).message_size_limit == 1000  # main.cf value inherited


def test_tls_and_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the Helm chart sets (cert-manager's Secret mounted as tls.crt/tls.key).
    monkeypatch.setenv("POSTFLEET_MYHOSTNAME", "mx.example")
    monkeypatch.setenv("POSTFLEET_SMTPD_TLS_SECURITY_LEVEL", "may")
    monkeypatch.setenv("POSTFLEET_SMTPD_TLS_CERT_FILE", "/etc/postfleet/tls/tls.crt")
    monkeypatch.setenv("POSTFLEET_SMTPD_TLS_KEY_FILE", "/etc/postfleet/tls/tls.key")
    monkeypatch.setenv("POSTFLEET_SMTPD_UPSTREAM_PROXY_PROTOCOL", "haproxy")
    monkeypatch.setenv(
        "POSTFLEET_LISTENERS",
        '[{"name":"smtp","port":2525},'
        ' {"name":"submission","port":2587,"overrides":{"smtpd_tls_security_level":"encrypt"}},'
        ' {"name":"smtps","port":2465,"overrides":{"smtpd_tls_wrappermode":"yes"}}]',
    )
    s = IngressSettings()
    smtp, submission, smtps = (s.params_for(x) for x in s.listeners)
    assert smtp.tls_level() == "may" and smtp.tls_protocols() == ">=TLSv1.2"
    assert submission.tls_level() == "encrypt"
    assert smtps.tls_level() == "encrypt" and smtps.smtpd_tls_wrappermode is True
    assert smtps.tls_key_path() == "/etc/postfleet/tls/tls.key"
    assert smtp.proxy_timeout() == smtps.proxy_timeout() == 5


def test_key_in_the_certificate_file() -> None:
    s = IngressSettings(myhostname="mx.example", smtpd_tls_security_level="may",
                        smtpd_tls_cert_file="/etc/ssl/mx.pem")
    assert s.tls_key_path() == "/etc/ssl/mx.pem"  # Postfix: $smtpd_tls_cert_file


def test_yaml_section(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "postfleet.yaml"
    path.write_text(
        "myhostname: mx.univ.es\n"
        "message_size_limit: 2000\n"
        "ingress_smtp:\n"
        "  smtpd_banner: $myhostname ESMTP ready\n"
        "  listeners:\n"
        "    - {name: smtp, address: 127.0.0.1, port: 2526, overrides: {smtpd_timeout: 10s}}\n"
    )
    monkeypatch.setenv("POSTFLEET_CONFIG", str(path))
    s = IngressSettings()
    assert s.message_size_limit == 2000
    assert s.banner(s.myhostname) == "mx.univ.es ESMTP ready"
    assert s.params_for(s.listeners[0]).smtpd_timeout == 10


@pytest.mark.parametrize(
    "values",
    [
        {"listeners": [{"name": "smtp", "port": 25, "overrides": {"myhostname": "x"}}]},
        {"listeners": [{"name": "smtp", "port": 25, "overrides": {"smtpd_timeout": "soon"}}]},
        {"listeners": [{"name": "a", "port": 25}, {"name": "a", "port": 26}]},
        {"smtpd_relay_restrictions": ["permit_mynetworks", "permit_open_relay"]},
        # Postfix refuses to start as an open relay; so do we.
        {"smtpd_relay_restrictions": ["permit_mynetworks"]},
        {"smtpd_relay_restrictions": ["permit"], "smtpd_recipient_restrictions": []},
        {"listeners": [{"name": "smtp", "port": 25,
                        "overrides": {"smtpd_relay_restrictions": "permit"}}]},
        {"smtpd_forbid_bare_newline": "maybe"},
        {"smtpd_forbid_bare_newline_exclusions": ["not-a-network"]},
        # TLS that needs a certificate but has none (Postfix would run without TLS).
        {"smtpd_tls_security_level": "may"},
        {"listeners": [{"name": "submission", "port": 587,
                        "overrides": {"smtpd_tls_security_level": "encrypt"}}]},
        {"listeners": [{"name": "smtps", "port": 465,
                        "overrides": {"smtpd_tls_wrappermode": True}}]},
        {"smtpd_tls_security_level": "dane", "smtpd_tls_cert_file": "/x.pem"},
        {"smtpd_tls_protocols": ">=TLSv1.4"},
        {"smtpd_tls_mandatory_protocols": "TLSv1 TLSv1.3"},
        {"smtpd_starttls_timeout": "0s"},
        {"smtpd_upstream_proxy_protocol": "proxy-v2"},
        {"smtpd_upstream_proxy_timeout": "-1"},
        # A name server is an address (asking DNS where DNS is would be circular).
        {"dns_nameservers": "dns.example"},
        {"dns_nameservers": "127.0.0.1:0"},
    ],
)
def test_bad_configuration_is_refused(values: dict) -> None:
    with pytest.raises(ValidationError):
        IngressSettings(myhostname="mx.example", **values)


def test_recipient_restrictions_can_carry_the_relay_check() -> None:
    s = IngressSettings(
        myhostname="mx.example", smtpd_relay_restrictions=[],
        smtpd_recipient_restrictions="permit_mynetworks reject_unauth_destination",
    )
    assert s.smtpd_recipient_restrictions == ["permit_mynetworks", "reject_unauth_destination"]


def test_listener_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        Listener.model_validate({"name": "smtp", "port": 25, "tls": True})


def test_content_filter_receive_overrides_and_filtered_domains() -> None:
    from postfleet.core.routing.store import RoutingView
    from postfleet.ingress_smtp.handler import IngressHandler
    from postfleet.ingress_smtp.settings import SmtpdParams

    with pytest.raises(ValueError, match="need transport:nexthop"):
        SmtpdParams(content_filter="filter")
    with pytest.raises(ValueError, match="unknown receive_override_options: no_such"):
        SmtpdParams(receive_override_options="no_address_mappings, no_such")
    params = SmtpdParams(content_filter="filter:", content_filter_domains=["a.test", ".b.test"])
    handler = IngressHandler(listener="smtp", params=params, routing=RoutingView(),
                             cleanup=None, checks=None)  # type: ignore[arg-type]
    assert handler.content_filter(["x@other.test", "y@a.test"]) == "filter:"
    assert handler.content_filter(["x@sub.b.test"]) == "filter:"
    assert handler.content_filter(["x@b.test", "y@sub.a.test"]) == ""
    everything = IngressHandler(listener="smtp", params=SmtpdParams(content_filter="filter:"),
                                routing=RoutingView(), cleanup=None,
                                checks=None)  # type: ignore[arg-type]
    assert everything.content_filter(["x@any.test"]) == "filter:"
