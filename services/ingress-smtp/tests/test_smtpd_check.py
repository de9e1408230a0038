"""The full restriction lists over SMTP, with Postfix's replies: access tables
of every type, name checks, smtpd_delay_reject both ways, defer_if_permit,
DATA and end-of-data lists, DNS lists and unknown domains against a dnsmasq
zone, and sender/login binding."""

from __future__ import annotations

import base64

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.sasl_users import UserTable
from postfleet.ingress_smtp.settings import IngressSettings

# 127.0.0.1, the tests' client, is outside mynetworks; example.test is ours to relay.
OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["example.test"])
BODY = b"Subject: checks\r\n\r\nbody\r\n.\r\n"


async def rcpt_reply(d, helo="client.example.org", sender="a@b.example.org",
                     rcpt="x@example.test") -> str:
    """EHLO, MAIL, RCPT: the first reply that is not a 2xx, else the RCPT's."""
    for command in (f"EHLO {helo}", f"MAIL FROM:<{sender}>", f"RCPT TO:<{rcpt}>"):
        code, lines = await d.cmd(command)
        if code >= 400 or command.startswith("RCPT"):
            return f"{code} {lines[-1]}"
    raise AssertionError("not reached")


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(("values", "kwargs", "reply"), [
    ({"smtpd_client_restrictions": "check_client_access cidr:{dir}/c.cidr"}, {},
     "554 5.7.1 <unknown[127.0.0.1]>: Client host rejected: Access denied"),
    ({"smtpd_client_restrictions":
      "check_client_access inline:{ {127.0.0=550 5.7.1 net blocked} }"},
     {}, "550 5.7.1 <unknown[127.0.0.1]>: Client host rejected: net blocked"),
    ({"smtpd_client_restrictions": "reject_unknown_client_hostname"}, {},
     "450 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.1]"),
    ({"smtpd_client_restrictions": "defer_if_permit"}, {},
     "450 4.7.1 <unknown[127.0.0.1]>: Client host rejected: defer_if_permit requested"),
    ({"smtpd_helo_restrictions": "reject_invalid_helo_hostname"}, {"helo": "bad_helo!"},
     "501 5.5.2 <bad_helo!>: Helo command rejected: Invalid name"),
    ({"smtpd_helo_restrictions": "reject_non_fqdn_helo_hostname"}, {"helo": "localhost"},
     "504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname"),
    ({"smtpd_helo_restrictions": "check_helo_access regexp:{dir}/helo.re"}, {},
     "554 5.7.1 <client.example.org>: Helo command rejected: no clients here"),
    ({"smtpd_sender_restrictions": "reject_non_fqdn_sender"}, {"sender": "joe"},
     "504 5.5.2 <joe>: Sender address rejected: need fully-qualified address"),
    ({"smtpd_sender_restrictions": "check_sender_access hash:{dir}/senders"},
     {"sender": "a@sub.spam.example"},
     "554 5.7.1 <a@sub.spam.example>: Sender address rejected: Access denied"),
    # access(5) order: user@domain, domain, parent domains, then user@.
    ({"smtpd_sender_restrictions": "check_sender_access hash:{dir}/senders"},
     {"sender": "postmaster@spam.example"},
     "554 5.7.1 <postmaster@spam.example>: Sender address rejected: Access denied"),
    ({"smtpd_sender_restrictions": "check_sender_access hash:{dir}/senders, reject"},
     {"sender": "postmaster@b.example.org"}, "250 2.1.5 Ok"),
    ({"smtpd_recipient_restrictions":
      "check_recipient_access inline:{ {x@example.test=450 4.2.1 mailbox busy} }"}, {},
     "450 4.2.1 <x@example.test>: Recipient address rejected: mailbox busy"),
    ({"smtpd_recipient_restrictions": "check_recipient_access pcre:{dir}/rcpt.re"},
     {"rcpt": "x+tag@example.test"},
     "550 5.1.1 <x+tag@example.test>: Recipient address rejected: no tag tag"),
    ({"smtpd_relay_restrictions": "reject_non_fqdn_recipient, reject_unauth_destination"},
     {"rcpt": "x@localhost"},
     "504 5.5.2 <x@localhost>: Recipient address rejected: need fully-qualified address"),
    # An access table's result may be a restriction list.
    ({"smtpd_sender_restrictions":
      "check_sender_access inline:{ {b.example.org=reject_non_fqdn_helo_hostname} }"},
     {"helo": "shortname"},
     "504 5.5.2 <shortname>: Helo command rejected: need fully-qualified hostname"),
])
async def test_restriction_replies(make_ingress, dialogs, tmp_path, values, kwargs, reply):
    write(tmp_path, "c.cidr", "10.0.0.0/8 OK\n127.0.0.0/8 REJECT\n")
    write(tmp_path, "helo.re", "/^client\\./ REJECT no clients here\n")
    write(tmp_path, "senders", "spam.example REJECT\npostmaster@ OK\n")
    write(tmp_path, "rcpt.re", "/^([^+@]+)\\+([^@]+)@/ 550 5.1.1 no tag $2\n")
    values = {k: v.replace("{dir}", str(tmp_path)) for k, v in values.items()}
    ingress = await make_ingress(snapshot=OUTSIDE, **values)
    assert await rcpt_reply(await dialogs(ingress.port()), **kwargs) == reply


async def test_delay_reject_no_refuses_at_each_command(make_ingress, dialogs) -> None:
    ingress = await make_ingress(
        snapshot=OUTSIDE, smtpd_delay_reject=False,
        smtpd_client_restrictions="check_client_access inline:{ {127.0.0.1=REJECT go away} }")
    d = await dialogs(ingress.port())
    assert d.greeting == (554, ["5.7.1 <unknown[127.0.0.1]>: Client host rejected: go away"])
    assert await d.line("EHLO client.example.org") == (
        "503 5.7.0 Error: access denied for unknown[127.0.0.1]")
    assert await d.line("QUIT") == "221 2.0.0 Bye"

    ingress = await make_ingress(snapshot=OUTSIDE, smtpd_delay_reject=False,
                                 smtpd_helo_restrictions="reject_non_fqdn_helo_hostname",
                                 smtpd_sender_restrictions="reject_non_fqdn_sender")
    d = await dialogs(ingress.port())
    assert await d.line("HELO shortname") == (
        "504 5.5.2 <shortname>: Helo command rejected: need fully-qualified hostname")
    assert (await d.cmd("EHLO client.example.org"))[0] == 250
    assert await d.line("MAIL FROM:<joe>") == (
        "504 5.5.2 <joe>: Sender address rejected: need fully-qualified address")
    assert await d.line("MAIL FROM:<joe@b.example.org>") == "250 2.1.0 Ok"


async def test_data_and_end_of_data_lists(make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE,
                                 smtpd_data_restrictions="reject_unauth_pipelining")
    d = await dialogs(ingress.port())
    assert await rcpt_reply(d) == "250 2.1.5 Ok"
    await d.send(b"DATA\r\n" + BODY)  # the content sent before the 354
    assert await d.reply() == (503, ["5.5.0 <DATA>: Data command rejected: "
                                     "Improper use of SMTP command pipelining"])
    ingress = await make_ingress(snapshot=OUTSIDE, smtpd_end_of_data_restrictions="reject")
    d = await dialogs(ingress.port())
    assert await rcpt_reply(d) == "250 2.1.5 Ok"
    assert await d.data(BODY) == (554, ["5.7.1 <END-OF-MESSAGE>: End-of-data rejected: "
                                        "Access denied"])
    assert cleanup.servicer.calls == 0


@pytest.mark.slow
async def test_dns_lists_and_unknown_domains(make_ingress, dialogs, make_dns) -> None:
    dns = make_dns({
        "domains": ["test"],
        "hosts": {"1.0.0.127.zen.test": "127.0.0.2", "spammer.test.dbl.test": "127.0.1.2",
                  "mail.good.test": "192.0.2.25"},
        "txt": {"1.0.0.127.zen.test": "listed: see https://zen.test/q?127.0.0.1"},
        "mx": {"good.test": [(10, "mail.good.test")]},
    })
    common = {"snapshot": OUTSIDE, "dns_nameservers": dns.nameserver}
    ingress = await make_ingress(smtpd_client_restrictions="reject_rbl_client zen.test",
                                 **common)
    assert await rcpt_reply(await dialogs(ingress.port())) == (
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.test; "
        "listed: see https://zen.test/q?127.0.0.1")
    # A reply filter that the answer does not match: not listed.
    ingress = await make_ingress(
        smtpd_client_restrictions="reject_rbl_client zen.test=127.0.0.[3..9]", **common)
    assert await rcpt_reply(await dialogs(ingress.port())) == "250 2.1.5 Ok"
    ingress = await make_ingress(smtpd_sender_restrictions="reject_rhsbl_sender dbl.test",
                                 **common)
    d = await dialogs(ingress.port())
    assert await rcpt_reply(d, sender="a@spammer.test") == (
        "554 5.7.1 Service unavailable; Sender address [a@spammer.test] blocked using dbl.test")
    ingress = await make_ingress(smtpd_sender_restrictions="reject_unknown_sender_domain",
                                 **common)
    assert await rcpt_reply(await dialogs(ingress.port()), sender="a@nowhere.test") == (
        "450 4.1.8 <a@nowhere.test>: Sender address rejected: Domain not found")
    assert await rcpt_reply(await dialogs(ingress.port()), sender="a@good.test") == (
        "250 2.1.5 Ok")
    ingress = await make_ingress(
        snapshot=OUTSIDE.model_copy(update={"mynetworks": ["127.0.0.0/8"]}),
        dns_nameservers=dns.nameserver,
        smtpd_recipient_restrictions="reject_unknown_recipient_domain")
    assert await rcpt_reply(await dialogs(ingress.port()), rcpt="x@nowhere.test") == (
        "450 4.1.2 <x@nowhere.test>: Recipient address rejected: Domain not found")
    assert await rcpt_reply(await dialogs(ingress.port()), rcpt="x@good.test") == (
        "250 2.1.5 Ok")
    assert ("A", "1.0.0.127.zen.test") in dns.queries()


async def test_sender_login_binding(make_ingress, dialogs, tmp_path) -> None:
    users = tmp_path / "users"
    for name in ("alice", "bob"):
        UserTable(users).add(name, f"{name}'s password")
    logins = "inline:{ alice@example.org=alice, {@shared.example.org=alice bob} }"
    ingress = await make_ingress(
        snapshot=OUTSIDE, smtpd_sasl_auth_enable=True, smtpd_sasl_path=str(users),
        smtpd_sender_login_maps=logins, smtpd_sender_restrictions="reject_sender_login_mismatch")

    async def as_user(name: str | None, sender: str) -> str:
        d = await dialogs(ingress.port())
        await d.cmd("EHLO client.example.org")
        if name:
            token = base64.b64encode(f"\0{name}\0{name}'s password".encode()).decode()
            assert await d.line(f"AUTH PLAIN {token}") == "235 2.7.0 Authentication successful"
        await d.cmd(f"MAIL FROM:<{sender}>")
        return await d.line("RCPT TO:<x@example.test>")

    assert await as_user(None, "alice@example.org") == (
        "553 5.7.1 <alice@example.org>: Sender address rejected: not logged in")
    assert await as_user(None, "someone@else.example.org") == "250 2.1.5 Ok"
    assert await as_user("alice", "alice@example.org") == "250 2.1.5 Ok"
    assert await as_user("bob", "alice@example.org") == (
        "553 5.7.1 <alice@example.org>: Sender address rejected: not owned by user bob")
    assert await as_user("bob", "team@shared.example.org") == "250 2.1.5 Ok"
    # reject_sender_login_mismatch: an authenticated user may not use unlisted senders.
    assert await as_user("bob", "bob@else.example.org") == (
        "553 5.7.1 <bob@else.example.org>: Sender address rejected: not owned by user bob")


@pytest.mark.parametrize(("values", "error"), [
    ({"smtpd_client_restrictions": "reject_everything"}, "unknown restriction"),
    ({"smtpd_client_restrictions": "check_client_access"}, "needs a table"),
    ({"smtpd_client_restrictions": "reject_rbl_client"}, "needs a domain"),
    ({"smtpd_sender_login_maps": "nofile"}, "not a lookup table"),
])
def test_bad_restriction_settings(values, error) -> None:
    with pytest.raises(ValueError, match=error):
        IngressSettings(myhostname="mx.postfleet.test", **values)


async def test_a_missing_table_stops_the_listener(make_ingress, tmp_path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        await make_ingress(
            smtpd_client_restrictions=f"check_client_access hash:{tmp_path}/missing")
