"""RCPT-time recipient validation: Postfix's reject_unlisted_recipient, with
smtpd's exact reply texts."""

from __future__ import annotations

from typing import Any

from postfleet.core.routing.rcpt_checks import (
    DEFAULT_RELAY_RESTRICTIONS,
    Client,
    check_recipient,
    outside_client,
    unlisted_recipient,
)
from postfleet.core.routing.snapshot import RoutingSnapshot


def snap(**kw: Any) -> RoutingSnapshot:
    base: dict[str, Any] = {
        "myhostname": "smtp.univ.es", "myorigin": "univ.es",
        "mydestination": ["$myhostname", "univ.es"], "mynetworks": ["192.168.0.0/16"],
        "alias_maps": {"postmaster": ["root"], "abuse": ["root"]},
        "local_recipient_maps": ["$alias_maps", "root", "rgarcia"],
        "virtual_alias_domains": ["fund-univ.es"],
        "virtual_alias_maps": {"gerente@fund-univ.es": ["rgarcia"]},
        "virtual_mailbox_domains": ["box.example"],
        "virtual_mailbox_maps": {"ann@box.example": "box.example/ann/"},
        "relocated_maps": {"moved@univ.es": "moved@fund-univ.es"},
        "transport_maps": {"closed@univ.es": "error:5.7.1 mailbox closed"},
    }
    base.update(kw)
    return RoutingSnapshot(**base)


def verdict(s: RoutingSnapshot, rcpt: str, ip: str = "192.0.2.9") -> str | None:
    reply = check_recipient(s, Client(ip), rcpt, relay_restrictions=DEFAULT_RELAY_RESTRICTIONS,
                            recipient_restrictions=[])
    return None if reply is None else str(reply)


def test_postfix_reply_texts() -> None:
    s = snap()
    assert verdict(s, "nobody@univ.es") == (
        "550 5.1.1 <nobody@univ.es>: Recipient address rejected: "
        "User unknown in local recipient table")
    assert verdict(s, "nobody@fund-univ.es") == (
        "550 5.1.1 <nobody@fund-univ.es>: Recipient address rejected: "
        "User unknown in virtual alias table")
    assert verdict(s, "bob@box.example") == (
        "550 5.1.1 <bob@box.example>: Recipient address rejected: "
        "User unknown in virtual mailbox table")
    assert verdict(s, "moved@univ.es") == (
        "550 5.1.6 <moved@univ.es>: Recipient address rejected: "
        "User has moved to moved@fund-univ.es")
    assert verdict(s, "closed@univ.es") == (
        "550 5.7.1 <closed@univ.es>: Recipient address rejected: mailbox closed")
    assert verdict(s, "x@far.example") == "554 5.7.1 <x@far.example>: Relay access denied"


def test_known_recipients_are_accepted() -> None:
    s = snap()
    for rcpt in ("rgarcia@univ.es", "RGarcia@Univ.ES", "root@smtp.univ.es", "abuse@univ.es",
                 "gerente@fund-univ.es", "ann@box.example", "postmaster", "Postmaster",
                 "postmaster@univ.es", "MAILER-DAEMON@univ.es", "double-bounce@univ.es",
                 "rgarcia"):
        assert verdict(s, rcpt) is None, rcpt


def test_mynetworks_clients_get_user_unknown_too() -> None:
    s = snap()
    assert verdict(s, "x@far.example", ip="192.168.1.5") is None  # relaying is allowed
    assert verdict(s, "nobody@univ.es", ip="192.168.1.5").startswith("550 5.1.1")


def test_canonical_or_virtual_matches_make_an_address_valid() -> None:
    s = snap(canonical_maps={"alias.name@univ.es": "rgarcia@univ.es"},
             virtual_alias_maps={"gerente@fund-univ.es": ["rgarcia"],
                                 "moved@univ.es": ["moved@fund-univ.es"]})
    assert verdict(s, "alias.name@univ.es") is None
    assert verdict(s, "moved@univ.es") is None  # matched before the relocated error


def test_without_local_recipient_maps_every_local_user_is_accepted() -> None:
    s = snap(local_recipient_maps=[])
    assert verdict(s, "anyone@univ.es") is None
    assert unlisted_recipient(s, "anyone@univ.es") is None


def test_show_user_unknown_table_name_no() -> None:
    s = snap(show_user_unknown_table_name=False)
    assert verdict(s, "nobody@univ.es") == (
        "550 5.1.1 <nobody@univ.es>: Recipient address rejected: User unknown")
    assert verdict(s, "nobody@fund-univ.es") == (
        "550 5.1.1 <nobody@fund-univ.es>: Recipient address rejected: User unknown")


def test_local_recipient_maps_keys_and_extensions() -> None:
    s = snap(recipient_delimiter="+", local_recipient_maps=["ann", "bob@univ.es", "@smtp.univ.es"])
    assert verdict(s, "ann+news@univ.es") is None
    assert verdict(s, "bob@univ.es") is None
    assert verdict(s, "anyone@smtp.univ.es") is None
    assert verdict(s, "carl@univ.es") is not None


def test_unlisted_check_can_be_turned_off_and_listed_explicitly() -> None:
    s = snap()
    reply = check_recipient(s, Client("192.0.2.9"), "nobody@univ.es",
                            relay_restrictions=DEFAULT_RELAY_RESTRICTIONS,
                            recipient_restrictions=[], reject_unlisted_recipient=False)
    assert reply is None
    reply = check_recipient(s, Client("192.0.2.9"), "nobody@univ.es",
                            relay_restrictions=DEFAULT_RELAY_RESTRICTIONS,
                            recipient_restrictions=["reject_unlisted_recipient"],
                            reject_unlisted_recipient=False)
    assert reply is not None and reply.status == "5.1.1"


def test_outside_client_is_outside_mynetworks() -> None:
    s = snap(mynetworks=["192.0.2.0/24", "198.51.100.0/24"])
    client = outside_client(s)
    assert client.address == "203.0.113.1" and not client.sasl_username


def test_a_quoted_local_part_is_looked_up_unquoted_as_postfix_does() -> None:
    s = snap()
    assert verdict(s, '"rgarcia"@univ.es') is None
    assert verdict(s, '"gerente"@fund-univ.es') is None
    assert verdict(s, '"nobody"@univ.es') == (
        "550 5.1.1 <nobody@univ.es>: Recipient address rejected: "
        "User unknown in local recipient table")
    assert verdict(s, '"x"@far.example') == "554 5.7.1 <x@far.example>: Relay access denied"


def test_internal_form() -> None:
    from postfleet.core.routing.addresses import internal_form

    assert internal_form('"rgarcia"@univ.es') == "rgarcia@univ.es"
    assert internal_form('"a\\"b c"@x') == 'a"b c@x'
    assert internal_form('"user@remote"@local') == "user@remote@local"
    assert internal_form("plain@x") == "plain@x"
    assert internal_form('"postmaster"') == "postmaster"
