"""Address rewriting: canonical(5), virtual(5) and aliases(5) semantics."""

from __future__ import annotations

from typing import Any

import pytest

from postfleet.core.routing.rewrite import (
    AliasExpansionError,
    canonical_recipient,
    canonical_sender,
    expand_aliases,
    expand_virtual,
    final_recipients,
    rewrite_recipient,
)
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.tables import address_keys


def snap(**kw: Any) -> RoutingSnapshot:
    kw.setdefault("myhostname", "mx.example.org")
    kw.setdefault("mydestination", ["$myhostname", "example.org"])
    kw.setdefault("myorigin", "example.org")
    return RoutingSnapshot(**kw)


def test_lookup_order_of_canonical_virtual_relocated() -> None:
    assert [k for k, _ in address_keys("user+foo@example.org", local=True, delimiter="+")] == [
        "user+foo@example.org", "user@example.org", "user+foo", "user", "@example.org"]
    assert [k for k, _ in address_keys("user@far.example", local=False, delimiter="+")] == [
        "user@far.example", "@far.example"]


# -- canonical -------------------------------------------------------------------
def test_sender_and_recipient_canonical_maps() -> None:
    s = snap(sender_canonical_maps={"joe@example.org": "joe.sender@example.org"},
             recipient_canonical_maps={"joe@example.org": "joe.rcpt@example.org"},
             canonical_maps={"joe.sender@example.org": "Joe.Common@example.org",
                             "@old.example": "@new.example", "ann": "ann.smith"})
    # sender_canonical_maps first, then canonical_maps
    assert canonical_sender(s, "joe@example.org") == "Joe.Common@example.org"
    assert canonical_sender(s, "") == ""  # the null sender stays null
    assert canonical_recipient(s, "joe@example.org") == "joe.rcpt@example.org"
    # "@domain" rewrites the domain and keeps the user.
    assert canonical_recipient(s, "Kim@old.example") == "Kim@new.example"
    # "user" keys apply to local domains; a bare result gets @$myorigin.
    assert canonical_recipient(s, "ann@example.org") == "ann.smith@example.org"
    assert canonical_recipient(s, "ann@far.example") == "ann@far.example"
    assert canonical_recipient(s, "ann") == "ann.smith@example.org"


def test_canonical_extension_propagation_and_nesting() -> None:
    s = snap(recipient_delimiter="+",
             canonical_maps={"a@example.org": "b@example.org", "b@example.org": "c@example.org",
                             "self@example.org": "self@example.org"})
    assert canonical_recipient(s, "a+tag@example.org") == "c+tag@example.org"
    assert canonical_recipient(s, "self@example.org") == "self@example.org"
    s = snap(canonical_maps={"a@example.org": "b@example.org"},
             propagate_unmatched_extensions=[], recipient_delimiter="+")
    assert canonical_recipient(s, "a+tag@example.org") == "b@example.org"
    # A canonical loop stops after 10 lookups (Postfix warns, keeps the last).
    loop = snap(canonical_maps={"x@example.org": "y@example.org", "y@example.org": "x@example.org"})
    assert canonical_recipient(loop, "x@example.org") in ("x@example.org", "y@example.org")


# -- virtual aliases ---------------------------------------------------------------
def test_virtual_one_to_many_catch_all_and_recursion() -> None:
    s = snap(virtual_alias_maps={
        "team@virt.example": ["ann@virt.example", "bob@far.example", "carl"],
        "ann@virt.example": ["ann.real@example.org"],
        "@virt.example": ["@catchall.example"],
        "list@virt.example": "a@x.example, b@x.example c@x.example",
    })
    assert expand_virtual(s, "team@virt.example") == [
        "ann.real@example.org", "bob@far.example", "carl@example.org"]
    assert expand_virtual(s, "zed@virt.example") == ["zed@catchall.example"]
    assert expand_virtual(s, "list@virt.example") == ["a@x.example", "b@x.example",
                                                       "c@x.example"]
    assert expand_virtual(s, "nobody@else.example") == ["nobody@else.example"]


def test_virtual_self_reference_keeps_the_address() -> None:
    s = snap(virtual_alias_maps={"keep@example.org": ["keep@example.org", "copy@x.example"],
                                 "me@example.org": ["me@example.org"]})
    assert expand_virtual(s, "keep@example.org") == ["keep@example.org", "copy@x.example"]
    assert expand_virtual(s, "me@example.org") == ["me@example.org"]
    # b -> a, b: b stays; a -> b is then b, already expanded into itself.
    s = snap(virtual_alias_maps={"a@x.example": ["b@x.example"],
                                 "b@x.example": ["a@x.example", "b@x.example"]})
    assert expand_virtual(s, "a@x.example") == ["b@x.example", "b@x.example"]


def test_virtual_loops_and_limits_defer_the_message() -> None:
    s = snap(virtual_alias_maps={"a@x.example": ["b@x.example"], "b@x.example": ["c@x.example"],
                                 "c@x.example": ["a@x.example"]})
    with pytest.raises(AliasExpansionError) as err:
        expand_virtual(s, "a@x.example")
    assert str(err.value.reply) == "451 4.6.0 Alias expansion error"
    assert "loop" in err.value.detail
    deep = {f"u{i}@x.example": [f"u{i + 1}@x.example"] for i in range(12)}
    assert expand_virtual(snap(virtual_alias_maps=deep), "u0@x.example") == ["u12@x.example"]
    with pytest.raises(AliasExpansionError) as err:
        expand_virtual(snap(virtual_alias_maps=deep, virtual_alias_recursion_limit=10),
                       "u0@x.example")
    assert "nesting" in err.value.detail
    wide = {"all@x.example": [f"m{i}@x.example" for i in range(6)]}
    assert len(expand_virtual(snap(virtual_alias_maps=wide), "all@x.example")) == 6
    with pytest.raises(AliasExpansionError) as err:
        expand_virtual(snap(virtual_alias_maps=wide, virtual_alias_expansion_limit=5),
                       "all@x.example")
    assert "expansion size" in err.value.detail


def test_virtual_extension_propagation() -> None:
    s = snap(recipient_delimiter="+", virtual_alias_maps={"joe@example.com":
                                                          ["joe.user@example.net"],
                                                          "@dom.example": ["@other.example"]})
    assert expand_virtual(s, "joe+foo@example.com") == ["joe.user+foo@example.net"]
    assert expand_virtual(s, "kim+bar@dom.example") == ["kim+bar@other.example"]


def test_rewrite_recipient_is_canonical_then_virtual() -> None:
    s = snap(canonical_maps={"old@example.org": "team@virt.example"},
             virtual_alias_maps={"team@virt.example": ["a@x.example", "b@x.example"]})
    assert rewrite_recipient(s, "old@example.org") == ["a@x.example", "b@x.example"]


# -- aliases --------------------------------------------------------------------------
def test_aliases_for_local_recipients_only() -> None:
    s = snap(alias_maps={"postmaster": "root", "root": ["admin@far.example", "root"],
                         "staff": "ann, bob, |/usr/bin/logger, /var/log/staff",
                         "ann": ["ann"], "far": ["x@far.example"]},
             virtual_alias_maps={"x@far.example": ["y@far.example"]})
    assert expand_aliases(s, "postmaster@example.org") == ["admin@far.example",
                                                          "root@example.org"]
    assert expand_aliases(s, "staff@mx.example.org") == [
        "ann@example.org", "bob@example.org", "|/usr/bin/logger", "/var/log/staff"]
    # Forwarded targets go through virtual aliasing again, as re-injected mail does.
    assert expand_aliases(s, "far@example.org") == ["y@far.example"]
    # Not local: no alias lookup.
    assert expand_aliases(s, "postmaster@far.example") == ["postmaster@far.example"]
    assert expand_aliases(s, "nobody@example.org") == ["nobody@example.org"]


def test_aliases_apply_only_where_the_local_transport_delivers() -> None:
    s = snap(alias_maps={"info": ["ann"]},
             transport_maps={"example.org": "lmtp:[imap.example.org]:24"})
    assert expand_aliases(s, "info@example.org") == ["info@example.org"]
    assert expand_aliases(s, "info@mx.example.org") == ["ann@example.org"]


def test_alias_loops_end_at_the_repeated_address() -> None:
    s = snap(alias_maps={"a": ["b"], "b": ["a"]})
    assert expand_aliases(s, "a@example.org") == ["a@example.org"]


def test_final_recipients_combine_every_step() -> None:
    s = snap(virtual_alias_domains=["fund.example"],
             virtual_alias_maps={"boss@fund.example": ["rg"], "all@fund.example":
                                 ["boss@fund.example", "out@far.example"]},
             alias_maps={"rg": ["rgarcia"]})
    assert final_recipients(s, "boss@fund.example") == ["rgarcia@example.org"]
    assert final_recipients(s, "all@fund.example") == ["rgarcia@example.org",
                                                       "out@far.example"]
    assert final_recipients(s, "ghost@fund.example") == ["ghost@fund.example"]
