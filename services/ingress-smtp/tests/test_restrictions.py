"""The relay decision on routing snapshots (reject_unauth_destination semantics)."""

from __future__ import annotations

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.ingress_smtp.restrictions import (
    DEFAULT_RELAY_RESTRICTIONS,
    Client,
    check_recipient,
    client_listed,
    normalize_ip,
)


def decide(snapshot: RoutingSnapshot, ip: str, rcpt: str, relay=DEFAULT_RELAY_RESTRICTIONS,
           recipient=()) -> str | None:
    reply = check_recipient(snapshot, Client(ip), rcpt, relay_restrictions=list(relay),
                            recipient_restrictions=list(recipient))
    return None if reply is None else f"{reply.code} {reply.status} {reply.text}"


def test_default_snapshot_is_closed_to_outside_clients() -> None:
    default = RoutingSnapshot()
    assert decide(default, "192.0.2.7", "x@example.com") == (
        "554 5.7.1 <x@example.com>: Relay access denied")
    assert decide(default, "2001:db8::1", "x@example.com") is not None
    assert decide(default, "", "x@example.com") is not None  # unknown client
    # ... open to the host itself (mynetworks_style=host) ...
    assert decide(default, "127.0.0.1", "x@example.com") is None
    assert decide(default, "::1", "x@example.com") is None
    # ... and anyone may send to the local domains.
    assert decide(default, "192.0.2.7", "postmaster@localhost") is None


@pytest.mark.parametrize(
    ("rcpt", "allowed"),
    [
        ("a@relay.example", True),
        ("a@dept.relay.example", True),  # parent_domain_matches_subdomains
        ("a@virtual.example", True),
        ("a@mailbox.example", True),
        ("a@mx.univ.es", True),  # $myhostname in mydestination
        ("postmaster", True),  # no domain: local
        ("a@elsewhere.example", False),
        ("a@notrelay.example", False),
    ],
)
def test_domains_we_accept_for(rcpt: str, allowed: bool) -> None:
    snapshot = RoutingSnapshot(
        myhostname="mx.univ.es", mynetworks=["10.0.0.0/8"], relay_domains=["relay.example"],
        virtual_alias_domains=["virtual.example"], virtual_mailbox_domains=["mailbox.example"],
        virtual_alias_maps={"a@virtual.example": ["a@mx.univ.es"]},
    )
    assert (decide(snapshot, "192.0.2.7", rcpt) is None) is allowed
    assert decide(snapshot, "10.1.2.3", rcpt) is None  # mynetworks relays anywhere


def test_defer_and_reject_variants() -> None:
    snapshot = RoutingSnapshot(mynetworks=["10.0.0.0/8"])
    assert decide(snapshot, "192.0.2.7", "a@b.example",
                  relay=["permit_mynetworks", "defer_unauth_destination"]) == (
        "454 4.7.1 <a@b.example>: Relay access denied")
    assert decide(snapshot, "10.0.0.1", "a@b.example",
                  recipient=["reject"]) == (
        "554 5.7.1 <a@b.example>: Recipient address rejected: Access denied")


def test_ipv4_mapped_client_matches_mynetworks() -> None:
    assert normalize_ip("::ffff:10.1.2.3") == "10.1.2.3"
    snapshot = RoutingSnapshot(mynetworks=["10.0.0.0/8"])
    assert client_listed(snapshot, ["$mynetworks"], "10.1.2.3")
    assert not client_listed(snapshot, ["$mynetworks"], "192.0.2.1")
    assert client_listed(snapshot, ["192.0.2.0/24"], "192.0.2.1")


# -- recipient tables at RCPT time (reject_unlisted_recipient) -----------------------
UNIV = RoutingSnapshot(
    myhostname="smtp.univ.es", myorigin="univ.es", mydestination=["$myhostname", "univ.es"],
    mynetworks=["10.0.0.0/8"], local_recipient_maps=["$alias_maps", "rgarcia"],
    alias_maps={"postmaster": ["root"]}, virtual_alias_domains=["fund-univ.es"],
    virtual_alias_maps={"gerente@fund-univ.es": ["rgarcia"]},
    relocated_maps={"moved@univ.es": "gerente@fund-univ.es"},
)


@pytest.mark.parametrize(("rcpt", "reply"), [
    ("rgarcia@univ.es", None),
    ("gerente@fund-univ.es", None),
    ("postmaster@univ.es", None),
    ("nobody@univ.es", "550 5.1.1 <nobody@univ.es>: Recipient address rejected: "
                       "User unknown in local recipient table"),
    ("nobody@fund-univ.es", "550 5.1.1 <nobody@fund-univ.es>: Recipient address rejected: "
                            "User unknown in virtual alias table"),
    ("moved@univ.es", "550 5.1.6 <moved@univ.es>: Recipient address rejected: "
                      "User has moved to gerente@fund-univ.es"),
])
def test_recipient_tables(rcpt: str, reply: str | None) -> None:
    assert decide(UNIV, "192.0.2.7", rcpt) == reply
    # mynetworks permits relaying, not unknown users.
    assert decide(UNIV, "10.0.0.1", rcpt) == reply


async def test_rcpt_replies_over_smtp_follow_the_live_snapshot(
        make_ingress, dialogs, cleanup) -> None:
    ingress = await make_ingress(snapshot=UNIV)
    d = await dialogs(ingress.port())
    await d.cmd("EHLO client.test")
    await d.cmd("MAIL FROM:<a@b.example>")
    assert await d.line("RCPT TO:<nobody@univ.es>") == (
        "550 5.1.1 <nobody@univ.es>: Recipient address rejected: "
        "User unknown in local recipient table")
    assert await d.line("RCPT TO:<nobody@fund-univ.es>") == (
        "550 5.1.1 <nobody@fund-univ.es>: Recipient address rejected: "
        "User unknown in virtual alias table")
    assert await d.line("RCPT TO:<moved@univ.es>") == (
        "550 5.1.6 <moved@univ.es>: Recipient address rejected: "
        "User has moved to gerente@fund-univ.es")
    assert await d.line("RCPT TO:<gerente@fund-univ.es>") == "250 2.1.5 Ok"
    # A new snapshot (a KV watch update) changes the next answer.
    ingress.routing._apply(UNIV.model_copy(update={
        "version": UNIV.version + 1, "local_recipient_maps": ["$alias_maps", "rgarcia", "nobody"]}))
    assert await d.line("RCPT TO:<nobody@univ.es>") == "250 2.1.5 Ok"
