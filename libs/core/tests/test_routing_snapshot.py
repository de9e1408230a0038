"""The snapshot document: main.cf-style values, folded table keys, JSON round trip."""

from __future__ import annotations

from postfleet.core.routing.snapshot import RoutingSnapshot


def test_main_cf_style_values_are_accepted() -> None:
    s = RoutingSnapshot.from_config({
        "myhostname": "relay.univ.es",
        "mydestination": "$myhostname, localhost.$mydomain",
        "relay_domains": "$mydomain fund-univ.es",
        "mynetworks": "127.0.0.1 192.168.0.0/16",
        "transport_maps": {"Univ.ES": "smtp:[smtp.univ.es]"},
        "virtual_alias_maps": {"A@Fund-Univ.es": "b, c@x.example"},
        "alias_maps": {"staff": "ann, |/usr/bin/logger -t staff"},
        "append_at_myorigin": "yes",
    })
    assert s.mydestination == ["$myhostname", "localhost.$mydomain"]
    assert s.relay_domains == ["$mydomain", "fund-univ.es"]
    assert s.transport_maps == {"univ.es": "smtp:[smtp.univ.es]"}
    assert s.virtual_alias_maps == {"a@fund-univ.es": ["b", "c@x.example"]}
    assert s.alias_maps == {"staff": ["ann", "|/usr/bin/logger -t staff"]}
    assert s.append_at_myorigin is True
    assert len(s.networks) == 2


def test_json_round_trip_keeps_postfix_defaults() -> None:
    s = RoutingSnapshot(myhostname="mx.example.org", parameters={"relay": "gw.example"},
                        relayhost="[$relay]")
    again = RoutingSnapshot.from_json(s.to_json())
    assert again == s
    assert again.virtual_alias_domains is None  # still "$virtual_alias_maps"
    assert again.expand(again.relayhost) == "[gw.example]"


def test_a_copy_recomputes_its_views() -> None:
    from postfleet.core.routing.resolver import AddressClass, address_class

    s = RoutingSnapshot(relay_domains=["a.example"])
    assert address_class(s, "a.example") is AddressClass.RELAY
    copy = s.model_copy(update={"relay_domains": ["b.example"]})
    assert address_class(copy, "a.example") is AddressClass.DEFAULT
    assert address_class(copy, "b.example") is AddressClass.RELAY
