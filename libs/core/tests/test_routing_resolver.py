"""The resolver (trivial-rewrite "resolve"): address classes, transport_maps
semantics, relayhost, relocated users -- each case as Postfix documents it."""

from __future__ import annotations

from typing import Any

import pytest

from postfleet.core.routing.resolver import (
    AddressClass,
    address_class,
    authorized_destination,
    resolve,
)
from postfleet.core.routing.snapshot import RoutingSnapshot


def snap(**kw: Any) -> RoutingSnapshot:
    kw.setdefault("myhostname", "mx.example.org")
    return RoutingSnapshot(**kw)


def hop(s: RoutingSnapshot, address: str) -> tuple[str, str, str]:
    r = resolve(s, address)
    return r.address_class.value, r.transport, r.nexthop


# -- $name expansion ------------------------------------------------------------
def test_expansion_of_postfix_and_user_defined_parameters() -> None:
    s = snap(myhostname="smtp.univ.es", parameters={"relay": "relay.univ.es"},
             relayhost="[$relay]", mydestination="$myhostname localhost.$mydomain, $mydomain")
    assert s.expand("$mydomain") == "univ.es"  # $myhostname minus its first label
    assert s.expand("[${relay}]:25") == "[relay.univ.es]:25"
    assert s.expand("$undefined|") == "|"  # Postfix: an undefined name is empty
    assert s.expand("${relay?yes}${nothing?no}${nothing:fallback}") == "yesfallback"
    assert s.expand_list(s.mydestination) == ["smtp.univ.es", "localhost.univ.es", "univ.es"]
    assert s.expand("$virtual_alias_maps") == "$virtual_alias_maps"  # a table reference
    assert hop(s, "x@google.com") == ("default", "smtp", "[relay.univ.es]")


def test_postfix_defaults_at_compatibility_level_36() -> None:
    s = RoutingSnapshot()
    assert s.relay_domains == []  # not $mydestination
    assert s.expand_list(s.mydestination) == [
        "localhost.localdomain", "localhost.localdomain", "localhost"]
    assert s.append_dot_mydomain is False
    assert "relay_domains" in s.parent_domain_matches_subdomains
    assert "transport_maps" not in s.parent_domain_matches_subdomains
    assert s.virtual_alias_recursion_limit == s.virtual_alias_expansion_limit == 1000


# -- address classes -----------------------------------------------------------------
def test_address_classes_and_their_precedence() -> None:
    s = snap(mydestination=["$myhostname", "local.example"],
             virtual_alias_domains=["va.example"], virtual_mailbox_domains=["vm.example"],
             relay_domains=["relay.example", "va.example"])
    assert address_class(s, "mx.example.org") is AddressClass.LOCAL
    assert address_class(s, "LOCAL.example.") is AddressClass.LOCAL
    assert address_class(s, "va.example") is AddressClass.VIRTUAL_ALIAS  # before relay
    assert address_class(s, "vm.example") is AddressClass.VIRTUAL_MAILBOX
    assert address_class(s, "relay.example") is AddressClass.RELAY
    assert address_class(s, "a.b.relay.example") is AddressClass.RELAY  # parent style
    assert address_class(s, "sub.local.example") is AddressClass.DEFAULT  # not parent style
    assert address_class(s, "sub.vm.example") is AddressClass.DEFAULT  # exact names only
    assert address_class(s, "elsewhere.example") is AddressClass.DEFAULT


def test_dot_domain_entries_in_mydestination_and_exclusions() -> None:
    s = snap(mydestination=[".univ.es", "!bad.univ.es", "univ.es"],
             relay_domains=["example.com", ".ignored.example"])
    assert address_class(s, "a.univ.es") is AddressClass.LOCAL
    assert address_class(s, "univ.es") is AddressClass.LOCAL
    # Postfix: the first match decides, so ".univ.es" wins over "!bad.univ.es".
    assert address_class(s, "bad.univ.es") is AddressClass.LOCAL
    s = snap(mydestination=["!bad.univ.es", ".univ.es"])
    assert address_class(s, "bad.univ.es") is AddressClass.DEFAULT
    # In a parent-style list ".domain" matches nothing (match_hostname).
    assert address_class(s, "x.ignored.example") is AddressClass.DEFAULT


def test_parent_domain_matches_subdomains_can_be_changed() -> None:
    s = snap(relay_domains=["example.com"], parent_domain_matches_subdomains=[])
    assert address_class(s, "example.com") is AddressClass.RELAY
    assert address_class(s, "a.example.com") is AddressClass.DEFAULT
    s = snap(mydestination=["example.com"], parent_domain_matches_subdomains=["mydestination"])
    assert address_class(s, "a.example.com") is AddressClass.LOCAL


def test_virtual_alias_domains_default_is_the_tables_domain_keys() -> None:
    s = snap(virtual_alias_maps={"example.com": ["anything"], "a@example.com": ["b@x.test"],
                                 "c@other.test": ["d@x.test"]})
    assert s.virtual_alias_domains is None
    assert address_class(s, "example.com") is AddressClass.VIRTUAL_ALIAS
    assert address_class(s, "other.test") is AddressClass.DEFAULT
    assert address_class(snap(virtual_alias_domains=[],
                              virtual_alias_maps={"example.com": ["x"]}),
                         "example.com") is AddressClass.DEFAULT


# -- class defaults, relayhost ------------------------------------------------------
def test_class_defaults_and_relayhost() -> None:
    s = snap(relay_domains=["relay.example"], virtual_alias_domains=["va.example"],
             virtual_mailbox_domains=["vm.example"], relayhost="[gw.example.org]:2525")
    assert hop(s, "u@mx.example.org") == ("local", "local", "mx.example.org")
    assert hop(s, "u@va.example") == (
        "virtual_alias", "error", "5.1.1 User unknown in virtual alias table")
    assert hop(s, "u@vm.example") == ("virtual_mailbox", "virtual", "vm.example")
    # relayhost: the default class and -- as Postfix documents for
    # relay_transport -- the relay class too; never local or virtual.
    assert hop(s, "u@relay.example") == ("relay", "relay", "[gw.example.org]:2525")
    assert hop(s, "u@far.example") == ("default", "smtp", "[gw.example.org]:2525")
    no_relayhost = snap(relay_domains=["relay.example"])
    assert hop(no_relayhost, "u@relay.example") == ("relay", "relay", "relay.example")
    assert hop(no_relayhost, "u@far.example") == ("default", "smtp", "far.example")


def test_a_nexthop_in_the_transport_parameter_beats_relayhost() -> None:
    s = snap(relay_domains=["relay.example"], relayhost="gw.example.org",
             relay_transport="relay:[inbound.example]", default_transport="smtp:[out.example]:587",
             local_transport="lmtp:unix:/run/dovecot/lmtp")
    assert hop(s, "u@relay.example") == ("relay", "relay", "[inbound.example]")
    assert hop(s, "u@far.example") == ("default", "smtp", "[out.example]:587")
    assert hop(s, "u@mx.example.org") == ("local", "lmtp", "unix:/run/dovecot/lmtp")


def test_bare_and_odd_addresses_are_canonicalised_first() -> None:
    s = snap(myorigin="example.org", mydestination=["$myhostname", "example.org"])
    r = resolve(s, "postmaster")
    assert (r.recipient, r.address_class) == ("postmaster@example.org", AddressClass.LOCAL)
    r = resolve(s, "u@EXAMPLE.org.")  # Postfix keeps the case; lookups fold it
    assert (r.recipient, r.address_class) == ("u@EXAMPLE.org", AddressClass.LOCAL)
    assert resolve(s, "@a.example,@b.example:u@far.example").recipient == "u@far.example"
    # A route hidden in a local address is resolved (swap_bangpath, quoted @).
    assert resolve(s, '"v@far.example"@example.org').address_class is AddressClass.DEFAULT
    assert resolve(s, "far.example!v@example.org").recipient == "v@far.example"


# -- transport_maps -------------------------------------------------------------------
TRANSPORT = {
    "boss+vip@example.com": "smtp:[vip.example.com]",
    "boss@example.com": "smtp:[boss.example.com]",
    "example.com": "smtp:[mail.example.com]",
    ".example.com": "relay:[sub.example.com]:2525",
    "local.example.com": "local:",
    "deep.sub.example.com": ":[deep.example.com]",
    "keep.example.com": ":",
    "gone.example.com": "error:",
    "nope.example.com": "error:5.7.1 no mail here",
    "*": "smtp:[smarthost.example]",
}


@pytest.mark.parametrize(("address", "expected"), [
    ("boss+vip@example.com", ("smtp", "[vip.example.com]")),  # user+ext@domain first
    ("boss+other@example.com", ("smtp", "[boss.example.com]")),  # then user@domain
    ("BOSS@Example.COM", ("smtp", "[boss.example.com]")),
    ("someone@example.com", ("smtp", "[mail.example.com]")),  # then domain
    ("x@a.b.example.com", ("relay", "[sub.example.com]:2525")),  # then .parent
    ("x@local.example.com", ("local", "local.example.com")),  # empty nexthop: the domain
    ("x@deep.sub.example.com", ("smtp", "[deep.example.com]")),  # ":nexthop" keeps transport
    ("x@keep.example.com", ("smtp", "[smarthost.example]")),  # ":" changes nothing...
    ("x@gone.example.com", ("error", "Address is undeliverable")),
    ("x@nope.example.com", ("error", "5.7.1 no mail here")),
    ("x@elsewhere.example", ("smtp", "[smarthost.example]")),  # then *
])
def test_transport_maps_lookup_order(address: str, expected: tuple[str, str]) -> None:
    s = snap(transport_maps=TRANSPORT, recipient_delimiter="+",
             default_transport="smtp:[smarthost.example]")
    assert hop(s, address)[1:] == expected


def test_keep_entry_without_wildcard_keeps_the_class_route() -> None:
    s = snap(transport_maps={"keep.example": ":"}, relayhost="[gw.example]")
    assert hop(s, "x@keep.example") == ("default", "smtp", "[gw.example]")


def test_transport_entry_with_empty_nexthop_drops_relayhost() -> None:
    # smtp.univ.es: ".univ.es smtp:" -- the department's own domain, not the relayhost.
    s = snap(relayhost="[relay.univ.es]", transport_maps={".univ.es": "smtp:"})
    assert hop(s, "x@depart1.univ.es") == ("default", "smtp", "depart1.univ.es")
    assert hop(s, "x@google.com") == ("default", "smtp", "[relay.univ.es]")


def test_transport_maps_do_not_touch_the_virtual_alias_class() -> None:
    s = snap(virtual_alias_domains=["va.example"], transport_maps={"va.example": "smtp:x"})
    assert hop(s, "u@va.example")[1] == "error"


def test_transport_maps_in_parent_style() -> None:
    s = snap(transport_maps={"example.com": "smtp:[a.example]"},
             parent_domain_matches_subdomains=["transport_maps"])
    assert hop(s, "x@sub.example.com")[1:] == ("smtp", "[a.example]")


def test_transport_lookup_without_recipient_delimiter_takes_the_address_whole() -> None:
    s = snap(transport_maps={"boss@example.com": "smtp:[boss.example.com]"})
    assert hop(s, "boss+x@example.com")[2] == "example.com"


# -- relocated -----------------------------------------------------------------------------
def test_relocated_users_for_every_class() -> None:
    s = snap(relocated_maps={"old@example.com": "new@example.net",
                             "@gone.example": "see https://gone.example/contact",
                             "bob": "bob@elsewhere.example"},
             transport_maps={"example.com": "smtp:[mail.example.com]"})
    assert hop(s, "old@example.com") == (
        "default", "error", "5.1.6 User has moved to new@example.net")
    assert hop(s, "x@gone.example")[2] == (
        "5.1.6 User has moved to see https://gone.example/contact")
    # "user" keys apply to local domains only (relocated(5)).
    assert hop(s, "bob@mx.example.org")[1:] == ("error",
                                                "5.1.6 User has moved to bob@elsewhere.example")
    assert hop(s, "bob@example.com")[1] == "smtp"


# -- permit_auth_destination ------------------------------------------------------------
def test_authorized_destinations_and_routed_local_parts() -> None:
    s = snap(relay_domains=["relay.example"], virtual_alias_domains=["va.example"])
    assert authorized_destination(s, "u@relay.example")
    assert authorized_destination(s, "u@mx.example.org")
    assert authorized_destination(s, "u@va.example")
    assert not authorized_destination(s, "u@far.example")
    # Sender-specified routes are never relayed (allow_untrusted_routing=no).
    assert not authorized_destination(s, "u%far.example@relay.example")
    assert not authorized_destination(s, '"u@far.example"@relay.example')
    assert not authorized_destination(s, "far.example!u@relay.example")


@pytest.mark.parametrize("content_filter, recipient, default, expected", [
    ("smtp:[127.0.0.1]:10025", "a@example.org", "", ("smtp", "[127.0.0.1]:10025")),
    ("filter:", "a@example.org", "", ("filter", "example.org")),  # the recipient's domain
    ("filter:", "a@example.org", "$myhostname-like", ("filter", "$myhostname-like")),
    ("filter:", "postmaster", "", ("filter", "mx.test")),  # no domain: myhostname
    ("filtro", "a@example.org", "", ("filtro", "example.org")),
])
def test_a_content_filter_overrides_the_route_as_qmgr_does(
        content_filter: str, recipient: str, default: str, expected: tuple[str, str]) -> None:
    from postfleet.core.routing.resolver import filter_route

    assert filter_route(content_filter, recipient, default, "mx.test") == expected
