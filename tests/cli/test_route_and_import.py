"""``postfleet route`` and ``postfleet import-postfix`` as an administrator
runs them: output format, stdin, table formats, what is reported on stderr."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from postfleet.cli.main import main
from postfleet.cli.postfix_import import (
    ROLE_PARAMETERS,
    import_postfix,
    parse_main_cf,
)
from postfleet.cli.routes import describe, route_context
from postfleet.core.postmap import parse_table
from postfleet.core.routing.nexthop import describe_nexthop

KEYS = ["address", "class", "rewritten", "transport", "nexthop", "port", "mx", "reject"]


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "postfleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CFG = {
    "myhostname": "mx.example.org",
    "routing": {
        "myhostname": "mx.example.org", "mydestination": ["$myhostname", "example.org"],
        "myorigin": "example.org", "relay_domains": ["relay.example"],
        "transport_maps": {"relay.example": "smtp:[in.relay.example]:2525",
                           "lmtp.example.org": "lmtp:inet:[imap.example.org]:24"},
        "virtual_alias_maps": {"team@example.org": ["a@far.example", "b@far.example"],
                               "loop@example.org": ["loop2@example.org"],
                               "loop2@example.org": ["loop@example.org"]},
    },
}


def test_route_json_has_exactly_the_documented_keys(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, CFG)
    assert main(["route", "--config", str(path), "--json", "u@relay.example",
                 "team@example.org", "u@far.example"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [list(x) for x in lines] == [KEYS] * 3
    relay, team, far = lines
    assert relay == {"address": "u@relay.example", "class": "relay",
                     "rewritten": ["u@relay.example"], "transport": "smtp",
                     "nexthop": "in.relay.example", "port": 2525, "mx": False, "reject": None}
    # Fanning out to several addresses: no single route to describe.
    assert team["rewritten"] == ["a@far.example", "b@far.example"]
    assert (team["transport"], team["nexthop"], team["port"], team["mx"]) == (None,) * 4
    assert far["mx"] is True and far["reject"] == "554 5.7.1 <u@far.example>: Relay access denied"


def test_route_reads_addresses_from_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, CFG)
    monkeypatch.setattr(sys, "stdin", io.StringIO("u@relay.example\n\npostmaster\n"))
    assert main(["route", "--config", str(path), "--json", "-"]) == 0
    out = [json.loads(x)["address"] for x in capsys.readouterr().out.splitlines()]
    assert out == ["u@relay.example", "postmaster"]


def test_route_text_output_and_alias_errors(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, CFG)
    assert main(["route", "--config", str(path), "team@example.org", "loop@example.org"]) == 0
    text = capsys.readouterr().out
    assert "team@example.org: class=local\n  rewritten to a@far.example, b@far.example" in text
    assert "note: 451 4.6.0 Alias expansion error" in text
    assert main(["route", "--config", str(path), "--json", "loop@example.org"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rewritten"] == ["loop@example.org"]
    assert "451 4.6.0 Alias expansion error" in captured.err


def test_mx_follows_dns_settings_and_transport_kinds() -> None:
    ctx = route_context({**CFG, "disable_dns_lookups": "yes"})
    assert describe(ctx, "u@far.example")["mx"] is False
    ctx = route_context({**CFG, "delivery": {"smtp_dns_support_level": "enabled"},
                         "disable_dns_lookups": True})
    assert describe(ctx, "u@far.example")["mx"] is True
    lmtp = describe(route_context(CFG), "u@lmtp.example.org")
    assert (lmtp["transport"], lmtp["nexthop"], lmtp["port"], lmtp["mx"]) == (
        "lmtp", "imap.example.org", 24, False)
    assert describe_nexthop("smtp", "[ipv6:2001:db8::1]:2525") == describe_nexthop(
        "relay", "[2001:db8::1]:2525")
    assert describe_nexthop("smtp", "mx.example:587").port == 587
    assert describe_nexthop("error", "5.1.1 gone").host == "5.1.1 gone"


def test_route_reject_uses_the_configured_restrictions(tmp_path: Path) -> None:
    cfg = {**CFG, "ingress_smtp": {"smtpd_recipient_restrictions": "reject"}}
    info = describe(route_context(cfg), "u@relay.example")
    assert info["reject"] == "554 5.7.1 <u@relay.example>: Recipient address rejected: " \
                             "Access denied"


@pytest.mark.slow
def test_the_cli_runs_as_a_program(tmp_path: Path) -> None:
    path = write_config(tmp_path, CFG)
    done = subprocess.run([sys.executable, "-m", "postfleet.cli", "route", "--config", str(path),
                           "--json", "u@relay.example"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["nexthop"] == "in.relay.example"


# -- import-postfix ------------------------------------------------------------------
def test_main_cf_syntax() -> None:
    warnings: list[str] = []
    params = parse_main_cf(
        "# comment\nmyhostname = a.example\n  # indented comment\n"
        "smtpd_recipient_restrictions =\n    permit_mynetworks,\n    reject_unauth_destination\n"
        "myhostname = b.example\nnot a parameter\n", warnings)
    assert params == {
        "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
        "myhostname": "b.example"}
    assert warnings == ["main.cf line 8: not 'name = value': not a parameter"]


def test_table_formats() -> None:
    assert parse_table("# c\nUniv.ES   smtp:[x]\n.sub  smtp:\nkey\n  continued value\n"
                       "univ.es other\n", "single") == {
        "univ.es": "smtp:[x]", ".sub": "smtp:", "key": "continued value"}
    assert parse_table("postmaster: root\nstaff: ann,\n  bob\n", "aliases") == {
        "postmaster": "root", "staff": "ann, bob"}


def test_import_reports_what_it_does_not_take(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "etc"
    src.mkdir()
    (src / "main.cf").write_text(
        "compatibility_level = 2\n"
        "myhostname = mx.example.org\n"
        "gateway = gw.example.org\n"
        "relayhost = [$gateway]:587\n"
        "smtp_use_tls = yes\n"
        "alias_maps = hash:/etc/aliases\n"
        "canonical_maps = hash:/etc/postfix/canonical\n"
        "sender_canonical_maps = regexp:/etc/postfix/sender.re\n"
        "relocated_maps = hash:/etc/postfix/relocated\n"
        "virtual_alias_maps = texthash:/etc/postfix/virtual\n"
        "transport_maps = hash:/etc/postfix/transport\n"
        "local_recipient_maps = proxy:unix:passwd.byname $alias_maps\n"
        "mydestination = $myhostname, hash:/etc/postfix/local_domains\n"
        "message_size_limit = 20480000\n"
        "disable_dns_lookups = yes\n"
        "myorigin = $mydomain\n")
    (src / "aliases").write_text("postmaster: root\n")
    (src / "canonical").write_text("@old.example  @example.org\n")
    (src / "relocated").write_text("gone@example.org   new@example.net\n")
    (src / "virtual").write_text("@example.com  @example.org\nsales@example.org  ann, bob\n")
    (src / "transport").write_text("example.net  :[hub.example]\nx.example  lmtp:unix:/run/lmtp\n"
                                   "y.example  relay:[y.hub]:2525\n* error:go away\n")
    (src / "local_domains").write_text("example.org  ok\nother.example  ok\n")
    out = tmp_path / "out"
    assert main(["import-postfix", str(src), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for expected in ("smtp_use_tls = yes: not a parameter postfleet supports",
                     "sender_canonical_maps: table type regexp: is not supported",
                     "local_recipient_maps: proxy:unix:passwd.byname cannot be read",
                     "compatibility_level = 2: postfleet applies level 3.6's defaults",
                     "transport_maps: example.net :[hub.example]: an empty transport",
                     "transport_maps: x.example lmtp:unix:/run/lmtp: nexthop",
                     "virtual_alias_maps: @example.com is not in a virtual alias domain",
                     "virtual_alias_maps: sales@example.org is not in a virtual alias domain"):
        assert expected in err, expected
    assert "gateway" not in err  # user-defined: referenced by relayhost
    cfg = yaml.safe_load((out / "postfleet.yaml").read_text())
    routing = cfg["routing"]
    assert routing["parameters"] == {"gateway": "gw.example.org"}
    assert routing["relayhost"] == "[$gateway]:587"
    assert routing["mydestination"] == ["$myhostname", "example.org", "other.example"]
    assert routing["canonical_maps"] == {"@old.example": "@example.org"}
    assert routing["virtual_alias_maps"]["sales@example.org"] == ["ann", "bob"]
    assert "local_recipient_maps" not in routing and "sender_canonical_maps" not in routing
    assert cfg["message_size_limit"] == 20480000 and cfg["disable_dns_lookups"] is True
    assert cfg["operator"]["routing"]["transport_maps"] == {
        "example.net": ":[hub.example]", "x.example": "lmtp:unix:/run/lmtp"}
    docs = [d for d in yaml.safe_load_all((out / "resources.yaml").read_text()) if d]
    transports = {d["spec"]["match"]: d["spec"] for d in docs if d["kind"] == "Transport"}
    assert transports["y.example"] == {"match": "y.example", "transport": "relay",
                                       "nexthop": {"host": "y.hub", "port": 2525, "mx": False}}
    assert transports["*"] == {"match": "*", "transport": "error", "message": "go away"}
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len(set(names)) and "default" in names
    ctx = route_context(cfg)
    assert describe(ctx, "gone@example.org")["reject"] == (
        "550 5.1.6 <gone@example.org>: Recipient address rejected: "
        "User has moved to new@example.net")
    assert describe(ctx, "kim@old.example")["rewritten"] == ["kim@example.org"]
    assert describe(ctx, "u@example.net")["nexthop"] == "hub.example"


def test_import_needs_a_main_cf(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no main\.cf"):
        main(["import-postfix", str(tmp_path), "--out", str(tmp_path / "out")])


def test_role_parameters_exist_in_the_roles() -> None:
    from postfleet.cleanup.settings import CleanupSettings
    from postfleet.core.settings import parameter_names
    from postfleet.delivery.settings import DeliverySettings
    from postfleet.ingress_smtp.settings import IngressSettings
    from postfleet.qmgr.settings import QmgrSettings

    fields = {f for cls in (IngressSettings, CleanupSettings, QmgrSettings, DeliverySettings)
              for f in parameter_names(cls)}
    assert ROLE_PARAMETERS <= fields, sorted(ROLE_PARAMETERS - fields)


def test_virtual_domain_lines_and_default_domain_list(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\nmyhostname = mx.example.org\n"
                                      "virtual_alias_maps = hash:/etc/postfix/virtual\n")
    (tmp_path / "virtual").write_text("example.com  anything\ninfo@example.com  ann@x.example\n")
    result = import_postfix(tmp_path)
    assert _unexpected(result.warnings) == []
    [domain] = [r for r in result.resources if r["kind"] == "MailDomain"
                and r["spec"]["class"] == "virtualAlias"]
    assert domain["spec"] == {"domain": "example.com", "class": "virtualAlias",
                              "aliases": {"info@example.com": ["ann@x.example"]}}
    info = describe(route_context(result.config), "info@example.com")
    assert (info["class"], info["rewritten"]) == ("virtual_alias", ["ann@x.example"])


def test_outbound_tls_and_sasl_are_imported(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = relay.univ.es\n"
        "relayhost = [smtp.isp.example]:587\n"
        "smtp_tls_security_level = may\nsmtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt\n"
        "smtp_tls_policy_maps = hash:/etc/postfix/tls_policy\n"
        "smtp_sasl_auth_enable = yes\nsmtp_sasl_password_maps = hash:/etc/postfix/sasl_passwd\n"
        "smtp_sasl_security_options = noanonymous\n")
    (tmp_path / "tls_policy").write_text("[smtp.isp.example]:587  secure match=smtp.isp.example\n"
                                         ".partner.example  verify\n")
    result = import_postfix(tmp_path)
    assert _unexpected(result.warnings) == []
    assert result.config["routing"]["smtp_tls_policy_maps"] == {
        "[smtp.isp.example]:587": "secure match=smtp.isp.example", ".partner.example": "verify"}
    assert result.config["smtp_tls_security_level"] == "may"
    assert result.config["smtp_sasl_password_maps"] == "hash:/etc/postfix/sasl_passwd"


def _unexpected(warnings: list[str]) -> list[str]:
    """All but the note every import at level 3.6 makes (the relay restrictions)."""
    return [w for w in warnings if not w.startswith("smtpd_relay_restrictions is not set")]


def test_unset_relay_restrictions_keep_postfix_s_454(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\nmyhostname = mx.example.org\n")
    result = import_postfix(tmp_path)
    assert result.config["smtpd_relay_restrictions"][-1] == "defer_unauth_destination"
    assert describe(route_context(result.config), "x@far.example")["reject"] == (
        "454 4.7.1 <x@far.example>: Relay access denied")
    (tmp_path / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = mx.example.org\n"
        "smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination\n")
    result = import_postfix(tmp_path)
    assert _unexpected(result.warnings) == result.warnings == []
    assert describe(route_context(result.config), "x@far.example")["reject"] == (
        "554 5.7.1 <x@far.example>: Relay access denied")
