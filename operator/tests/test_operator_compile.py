"""compile.py: every mapping to Postfix's tables and every validation error."""

from __future__ import annotations

from typing import Any

import pytest

from postfleet.core.mailauth import keys
from postfleet.core.routing.resolver import AddressClass, resolve
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.operator.compile import (
    MAILDOMAIN,
    TRANSPORT,
    Compiled,
    Outcome,
    Resource,
    compile_routing,
)

BASE = RoutingSnapshot(myhostname="relay.univ.es")


def md(name: str, spec: Any, created: str = "", **kw: Any) -> Resource:
    return Resource(MAILDOMAIN, kw.pop("ns", "mail"), name, spec, created, **kw)


def tr(name: str, spec: Any, created: str = "", **kw: Any) -> Resource:
    return Resource(TRANSPORT, kw.pop("ns", "mail"), name, spec, created, **kw)


def build(*resources: Resource, base: RoutingSnapshot = BASE) -> Compiled:
    return compile_routing(resources, base)


def error_of(*resources: Resource, base: RoutingSnapshot = BASE) -> str | None:
    """The error of the last resource given."""
    return build(*resources, base=base).outcomes[resources[-1].key].error


def transport_value(spec: dict[str, Any], base: RoutingSnapshot = BASE) -> str:
    compiled = build(tr("t", spec), base=base)
    assert compiled.outcomes[("Transport", "mail", "t")].error is None
    return compiled.snapshot.transport_maps[spec["match"].lower().rstrip(".")]


# -- MailDomain mappings ---------------------------------------------------------------
def test_every_domain_class_goes_to_its_postfix_parameter() -> None:
    snap = build(
        md("a", {"domain": "univ.es", "class": "local"}),
        md("b", {"domain": "dept.univ.es", "class": "relay"}),
        md(
            "c",
            {
                "domain": "fund-univ.es",
                "class": "virtualAlias",
                "aliases": {"info@fund-univ.es": ["secretaria@univ.es"]},
            },
        ),
        md("d", {"domain": "hosted.example", "class": "virtualMailbox"}),
    ).snapshot
    # The base's own mydestination stays first (Postfix's defaults).
    assert snap.mydestination == ["$myhostname", "localhost.$mydomain", "localhost", "univ.es"]
    assert snap.relay_domains == ["dept.univ.es"]
    assert snap.virtual_alias_domains == ["fund-univ.es"]
    assert snap.virtual_alias_maps == {"info@fund-univ.es": ["secretaria@univ.es"]}
    assert snap.virtual_mailbox_domains == ["hosted.example"]
    assert snap.version == 0  # the store numbers versions
    assert resolve(snap, "x@univ.es").address_class is AddressClass.LOCAL
    assert resolve(snap, "x@dept.univ.es").address_class is AddressClass.RELAY
    assert resolve(snap, "x@fund-univ.es").address_class is AddressClass.VIRTUAL_ALIAS
    assert resolve(snap, "x@hosted.example").address_class is AddressClass.VIRTUAL_MAILBOX


def test_include_subdomains_adds_the_dot_domain_form() -> None:
    snap = build(
        md("a", {"domain": "univ.es", "class": "local", "includeSubdomains": True}),
        md("b", {"domain": "va.example", "class": "virtualAlias", "includeSubdomains": True}),
        md("c", {"domain": "vm.example", "class": "virtualMailbox", "includeSubdomains": True}),
    ).snapshot
    assert snap.mydestination[-2:] == [".univ.es", "univ.es"]
    assert snap.virtual_alias_domains == [".va.example", "va.example"]
    assert snap.virtual_mailbox_domains == [".vm.example", "vm.example"]


def test_relay_domains_match_subdomains_either_way() -> None:
    compiled = build(
        md("a", {"domain": "one.example", "class": "relay", "includeSubdomains": True}),
        md("b", {"domain": "two.example", "class": "relay", "includeSubdomains": False}),
        md("c", {"domain": "three.example", "class": "relay"}),
    )
    # parent_domain_matches_subdomains covers relay_domains: listed once.
    assert compiled.snapshot.relay_domains == ["one.example", "three.example", "two.example"]
    assert resolve(compiled.snapshot, "x@a.one.example").address_class is AddressClass.RELAY
    assert compiled.outcomes[("MailDomain", "mail", "a")] == Outcome()
    assert compiled.outcomes[("MailDomain", "mail", "b")] == Outcome(
        notes=("relay_domains also matches subdomains (Postfix parent_domain_matches_subdomains)",)
    )
    assert compiled.outcomes[("MailDomain", "mail", "c")] == Outcome()


def test_domains_and_keys_are_normalised_and_output_is_sorted() -> None:
    one = build(
        md("b", {"domain": "Zeta.Example.", "class": "relay"}),
        md("a", {"domain": "alpha.example", "class": "relay"}),
        md(
            "c",
            {
                "domain": "va.example",
                "class": "virtualAlias",
                "aliases": {
                    "Info@VA.example": ["Someone@Else.example"],
                    "@va.example": ["catchall@else.example"],
                },
            },
        ),
        tr("t2", {"match": "B.example", "transport": "relay"}),
        tr("t1", {"match": "a.example.", "transport": "relay"}),
    )
    two = build(
        *reversed(
            [
                md("b", {"domain": "Zeta.Example.", "class": "relay"}),
                md("a", {"domain": "alpha.example", "class": "relay"}),
                md(
                    "c",
                    {
                        "domain": "va.example",
                        "class": "virtualAlias",
                        "aliases": {
                            "Info@VA.example": ["Someone@Else.example"],
                            "@va.example": ["catchall@else.example"],
                        },
                    },
                ),
                tr("t2", {"match": "B.example", "transport": "relay"}),
                tr("t1", {"match": "a.example.", "transport": "relay"}),
            ]
        )
    )
    assert one.snapshot == two.snapshot
    assert one.snapshot.relay_domains == ["alpha.example", "zeta.example"]
    assert list(one.snapshot.transport_maps) == ["a.example", "b.example"]
    assert one.snapshot.virtual_alias_maps == {
        "@va.example": ["catchall@else.example"],
        "info@va.example": ["Someone@Else.example"],
    }


def test_base_entries_of_the_same_class_are_not_repeated() -> None:
    compiled = build(md("a", {"domain": "localhost", "class": "local"}))
    assert compiled.outcomes[("MailDomain", "mail", "a")].ok
    assert compiled.snapshot.mydestination == ["$myhostname", "localhost.$mydomain", "localhost"]


# -- Transport mappings --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (
            {
                "match": "univ.es",
                "transport": "smtp",
                "nexthop": {"host": "smtp.univ.es", "mx": False},
            },
            "smtp:[smtp.univ.es]",
        ),
        (
            {
                "match": "univ.es",
                "transport": "smtp",
                "nexthop": {"host": "smtp.univ.es", "port": 587, "mx": False},
            },
            "smtp:[smtp.univ.es]:587",
        ),
        (
            {"match": "univ.es", "transport": "smtp", "nexthop": {"host": "univ.es", "port": 2525}},
            "smtp:univ.es:2525",
        ),
        ({"match": "univ.es", "transport": "smtp", "nexthop": {"host": "univ.es"}}, "smtp:univ.es"),
        ({"match": "univ.es", "transport": "relay"}, "relay:"),
        ({"match": ".univ.es", "transport": "smtp", "nexthop": {}}, "smtp:"),
        (
            {"match": "*", "transport": "smtp", "nexthop": {"host": "192.0.2.7", "mx": False}},
            "smtp:[192.0.2.7]",
        ),
        (
            {
                "match": "user+ext@univ.es",
                "transport": "lmtp",
                "nexthop": {"host": "ipv6:2001:db8::24", "port": 24, "mx": False},
            },
            "lmtp:[2001:db8::24]:24",
        ),
        (
            {
                "match": "univ.es",
                "transport": "lmtp",
                "nexthop": {"host": "localhost", "port": 24, "mx": False},
            },
            "lmtp:[localhost]:24",
        ),
        (
            {
                "match": "univ.es",
                "transport": "amavis",
                "nexthop": {"host": "127.0.0.1", "port": 10024, "mx": False},
            },
            "amavis:[127.0.0.1]:10024",
        ),
        ({"match": "univ.es", "transport": "local"}, "local:"),
        (
            {"match": "univ.es", "transport": "virtual", "nexthop": {"host": "mailbox.univ.es"}},
            "virtual:mailbox.univ.es",
        ),
        (
            {"match": "old@univ.es", "transport": "error", "message": "5.1.1 gone to Mars"},
            "error:5.1.1 gone to Mars",
        ),
        ({"match": "old@univ.es", "transport": "error"}, "error:"),
        (
            {"match": "spam.example", "transport": "discard", "message": "silently"},
            "discard:silently",
        ),
    ],
)
def test_transport_entries_use_transport5_syntax(spec: dict[str, Any], value: str) -> None:
    assert transport_value(spec) == value


def test_transport_routes_resolve_like_postfix() -> None:
    snap = build(
        md("d", {"domain": "univ.es", "class": "relay"}),
        tr(
            "a",
            {
                "match": "univ.es",
                "transport": "smtp",
                "nexthop": {"host": "smtp.univ.es", "mx": False},
            },
        ),
        tr("b", {"match": ".univ.es", "transport": "relay"}),
        tr(
            "c",
            {
                "match": "boss@univ.es",
                "transport": "lmtp",
                "nexthop": {"host": "dovecot.univ.es", "port": 24, "mx": False},
            },
        ),
    ).snapshot
    route = resolve(snap, "x@univ.es")
    assert (route.transport, route.nexthop) == ("smtp", "[smtp.univ.es]")
    route = resolve(snap, "x@dept.univ.es")  # empty nexthop keeps the domain
    assert (route.transport, route.nexthop) == ("relay", "dept.univ.es")
    route = resolve(snap, "boss@univ.es")
    assert (route.transport, route.nexthop) == ("lmtp", "[dovecot.univ.es]:24")


def test_a_concurrency_limit_without_a_next_hop_is_accepted_with_a_note() -> None:
    compiled = build(tr("t", {"match": "x.example", "transport": "smtp", "concurrencyLimit": 5}))
    outcome = compiled.outcomes[("Transport", "mail", "t")]
    assert outcome.ok
    assert outcome.notes == (
        "spec.concurrencyLimit needs spec.nexthop; default_destination_concurrency_limit applies",
    )
    assert compiled.snapshot.destination_concurrency_limits == {}


RELAY = {"host": "smtp.isp.example", "port": 587, "mx": False}
SECRETS = {("mail", "relay-auth"): {"password": "univ-relay:s3cret", "other": "x"},
           ("mail", "broken"): {"password": "no colon here"}}


def test_tls_and_credentials_are_carried_for_their_next_hop() -> None:
    compiled = compile_routing([
        tr("relay", {"match": "*", "transport": "smtp", "nexthop": RELAY, "tls": "verify",
                     "authSecretRef": {"name": "relay-auth"}}),
        tr("partner", {"match": ".partner.example", "transport": "smtp", "tls": "secure"}),
        tr("same", {"match": "x.example", "transport": "relay", "nexthop": RELAY,
                    "tls": "verify"}),  # the same policy for the same next hop: shared
    ], BASE, SECRETS)
    assert all(o.ok and not o.notes for o in compiled.outcomes.values()), compiled.outcomes
    assert compiled.snapshot.smtp_tls_policy_maps == {
        "[smtp.isp.example]:587": "verify", ".partner.example": "secure"}
    assert compiled.sasl_passwords == {"[smtp.isp.example]:587": "univ-relay:s3cret"}
    assert "s3cret" not in compiled.snapshot.to_json().decode()


def test_base_tls_policies_are_kept() -> None:
    base = BASE.model_copy(update={"smtp_tls_policy_maps": {"[mx.base.example]": "encrypt"}})
    compiled = build(tr("t", {"match": "a.example", "transport": "smtp", "tls": "may"}),
                     base=base)
    assert compiled.snapshot.smtp_tls_policy_maps == {
        "[mx.base.example]": "encrypt", "a.example": "may"}


@pytest.mark.parametrize(("spec", "error"), [
    ({"tls": "dane"}, 'spec.tls "dane" is not enforced by the smtp client '
                      "(it does none, may, encrypt, verify, secure)"),
    ({"match": "*", "tls": "verify"}, 'spec.tls needs spec.nexthop when spec.match is "*"'),
    ({"transport": "lmtp", "nexthop": {"host": "d.example"}, "tls": "verify"},
     "spec.tls applies to SMTP transports only, not lmtp"),
    ({"authSecretRef": {"name": "missing"}, "nexthop": RELAY},
     "Secret mail/missing (spec.authSecretRef) not found"),
    ({"authSecretRef": {"name": "relay-auth", "key": "nope"}, "nexthop": RELAY},
     'Secret mail/relay-auth has no key "nope"'),
    ({"authSecretRef": {"name": "broken"}, "nexthop": RELAY},
     'Secret mail/broken key "password" must hold one line username:password'),
    ({"match": "u@x.example", "authSecretRef": {"name": "relay-auth"}},
     'spec.authSecretRef needs spec.nexthop when spec.match is "u@x.example"'),
])
def test_tls_and_credential_errors(spec: dict[str, Any], error: str) -> None:
    full = {"match": "x.example", "transport": "smtp", **spec}
    compiled = compile_routing([tr("t", full)], BASE, SECRETS)
    assert compiled.outcomes[("Transport", "mail", "t")].error == error
    assert compiled.sasl_passwords == {}
    assert compiled.snapshot.smtp_tls_policy_maps == {}


def test_conflicting_tls_and_credentials_for_one_next_hop() -> None:
    first = tr("a", {"match": "a.example", "transport": "smtp", "nexthop": RELAY,
                     "tls": "verify", "authSecretRef": {"name": "relay-auth"}}, "1")
    tls = tr("b", {"match": "b.example", "transport": "smtp", "nexthop": RELAY,
                   "tls": "may"}, "2")
    auth = tr("c", {"match": "c.example", "transport": "smtp", "nexthop": RELAY,
                    "authSecretRef": {"name": "relay-auth", "key": "other"}}, "3")
    compiled = compile_routing([first, tls, auth], BASE, {
        ("mail", "relay-auth"): {"password": "u:p", "other": "v:q"}})
    assert compiled.outcomes[tls.key].error == (
        'the TLS policy for "[smtp.isp.example]:587" is already set by Transport mail/a')
    assert compiled.outcomes[auth.key].error == (
        'SMTP AUTH for "[smtp.isp.example]:587" is already set by Transport mail/a')


def test_a_concurrency_limit_is_carried_for_its_next_hop() -> None:
    compiled = build(
        tr("a", {"match": "a.example", "transport": "smtp", "concurrencyLimit": 5,
                 "nexthop": {"host": "mx.example.org", "port": 25, "mx": False}}),
        tr("b", {"match": "b.example", "transport": "smtp", "concurrencyLimit": 3,
                 "nexthop": {"host": "mx.example.org", "port": 25, "mx": False}}),
    )
    assert compiled.outcomes[("Transport", "mail", "a")].notes == ()
    assert compiled.snapshot.destination_concurrency_limits == {"smtp:[mx.example.org]:25": 3}


# -- MailDomain errors ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("nonsense", "spec must be a mapping"),
        ({"class": "local"}, "spec.domain is required"),
        ({"domain": "  ", "class": "local"}, "spec.domain is required"),
        (
            {"domain": "bad_domain.example", "class": "local"},
            'spec.domain "bad_domain.example" is not a valid domain name',
        ),
        (
            {"domain": "-x.example", "class": "local"},
            'spec.domain "-x.example" is not a valid domain name',
        ),
        (
            {"domain": "x.example"},
            "spec.class must be one of local, relay, virtualAlias, virtualMailbox",
        ),
        (
            {"domain": "x.example", "class": "mailbox"},
            'spec.class must be one of local, relay, virtualAlias, virtualMailbox (got "mailbox")',
        ),
        (
            {"domain": "x.example", "class": "local", "includeSubdomains": "yes"},
            "spec.includeSubdomains must be true or false",
        ),
        (
            {"domain": "x.example", "class": "local", "aliases": {"a@x.example": ["b@y.example"]}},
            "spec.aliases is only allowed with class virtualAlias",
        ),
        (
            {"domain": "x.example", "class": "virtualAlias", "aliases": ["a@x.example"]},
            "spec.aliases must map addresses to lists of targets",
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"nobody": ["a@b.example"]},
            },
            'alias "nobody" is not an address (user@domain or @domain)',
        ),
        (
            {"domain": "x.example", "class": "virtualAlias", "aliases": {"@-x": ["a@b.example"]}},
            'alias "@-x" is not an address (user@domain or @domain)',
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@y.example": ["b@z.example"]},
            },
            'alias "a@y.example" is outside domain "x.example"',
        ),
        (
            {"domain": "x.example", "class": "virtualAlias", "aliases": {"a@x.example": []}},
            'alias "a@x.example" needs at least one target',
        ),
        (
            {"domain": "x.example", "class": "virtualAlias", "aliases": {"a@x.example": [" "]}},
            'alias "a@x.example" has an empty target',
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@x.example": ["b c@y.example"]},
            },
            'alias "a@x.example" target "b c@y.example" is not an address',
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@x.example": ["b@bad_domain"]},
            },
            'alias "a@x.example" target "b@bad_domain" is not an address',
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@x.example": ["b@y.example"], "A@X.example": ["c@y.example"]},
            },
            'alias "A@X.example" is listed twice',
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@x.example": ["b@x.example"], "b@x.example": ["a@x.example"]},
            },
            "alias loop: a@x.example -> b@x.example -> a@x.example",
        ),
        (
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {"a@x.example": ["b@x.example"], "@x.example": ["a@x.example"]},
            },
            "alias loop: a@x.example -> @x.example -> a@x.example",
        ),
    ],
)
def test_maildomain_errors(spec: Any, error: str) -> None:
    assert error_of(md("m", spec)) == error


def test_alias_targets_may_be_bare_users_domain_rewrites_or_themselves() -> None:
    compiled = build(
        md(
            "m",
            {
                "domain": "x.example",
                "class": "virtualAlias",
                "aliases": {
                    "a@x.example": ["a@x.example", "archive"],  # self-reference keeps a copy
                    "@x.example": ["@y.example"],  # domain rewrite
                },
            },
        )
    )
    assert compiled.outcomes[("MailDomain", "mail", "m")].ok
    assert compiled.snapshot.virtual_alias_maps["a@x.example"] == ["a@x.example", "archive"]


def test_alias_loop_across_resources_rejects_the_later_one() -> None:
    first = md(
        "first",
        {"domain": "x.example", "class": "virtualAlias", "aliases": {"@x.example": ["@y.example"]}},
        "2026-01-01T00:00:00Z",
    )
    second = md(
        "second",
        {"domain": "y.example", "class": "virtualAlias", "aliases": {"@y.example": ["@x.example"]}},
        "2026-01-02T00:00:00Z",
    )
    compiled = build(second, first)
    assert compiled.outcomes[first.key].ok
    assert compiled.outcomes[second.key].error == (
        "alias loop: @y.example -> @x.example -> @y.example"
    )
    assert "y.example" not in compiled.snapshot.virtual_alias_domains
    assert compiled.snapshot.virtual_alias_maps == {"@x.example": ["@y.example"]}


def test_base_aliases_count_as_defined() -> None:
    base = BASE.model_copy(update={"virtual_alias_maps": {"a@x.example": ["b@y.example"]}})
    spec = {
        "domain": "x.example",
        "class": "virtualAlias",
        "aliases": {"a@x.example": ["c@y.example"]},
    }
    assert error_of(md("m", spec), base=base) == (
        'alias "a@x.example" is already defined by the operator\'s routing configuration'
    )


def test_a_domain_claimed_twice_goes_to_the_older_resource() -> None:
    old = md("zz-old", {"domain": "x.example", "class": "relay"}, "2026-01-01T00:00:00Z")
    new = md("aa-new", {"domain": "x.example", "class": "local"}, "2026-01-02T00:00:00Z")
    same = md("bb-same", {"domain": "x.example", "class": "relay"}, "2026-01-03T00:00:00Z")
    compiled = build(new, same, old)
    assert compiled.outcomes[old.key].ok
    assert compiled.outcomes[new.key].error == (
        'domain "x.example" is already claimed by MailDomain mail/zz-old (class relay)'
    )
    assert compiled.outcomes[same.key].error == (
        'domain "x.example" is already claimed by MailDomain mail/zz-old (class relay)'
    )
    assert compiled.snapshot.relay_domains == ["x.example"]
    assert "x.example" not in compiled.snapshot.mydestination


def test_the_incumbent_keeps_its_claim_and_ties_go_by_namespace_then_name() -> None:
    older = md("older", {"domain": "x.example", "class": "relay"}, "2026-01-01T00:00:00Z")
    holder = md(
        "holder", {"domain": "x.example", "class": "local"}, "2026-01-05T00:00:00Z", incumbent=True
    )
    compiled = build(older, holder)
    assert compiled.outcomes[holder.key].ok
    assert compiled.outcomes[older.key].error == (
        'domain "x.example" is already claimed by MailDomain mail/holder (class local)'
    )
    a = md("b", {"domain": "y.example", "class": "relay"}, "2026-01-01T00:00:00Z", ns="a")
    b = md("a", {"domain": "y.example", "class": "relay"}, "2026-01-01T00:00:00Z", ns="b")
    assert build(b, a).outcomes[b.key].error == (
        'domain "y.example" is already claimed by MailDomain a/b (class relay)'
    )


def test_include_subdomains_claims_conflict_too() -> None:
    one = md("a", {"domain": "x.example", "class": "local", "includeSubdomains": True}, "1")
    two = md("b", {"domain": "x.example", "class": "virtualMailbox"}, "2")
    assert error_of(one, two) == (
        'domain "x.example" is already claimed by MailDomain mail/a (class local)'
    )


def test_base_domains_of_another_class_are_claimed() -> None:
    assert error_of(md("m", {"domain": "localhost", "class": "relay"})) == (
        'domain "localhost" is already claimed by the operator\'s routing configuration '
        "(class local)"
    )


def test_a_rejected_resource_claims_nothing() -> None:
    bad = md(
        "bad",
        {
            "domain": "x.example",
            "class": "virtualAlias",
            "aliases": {"a@x.example": ["b@x.example"], "b@x.example": ["a@x.example"]},
        },
        "2026-01-01T00:00:00Z",
    )
    good = md("good", {"domain": "x.example", "class": "relay"}, "2026-01-02T00:00:00Z")
    compiled = build(bad, good)
    assert not compiled.outcomes[bad.key].ok
    assert compiled.outcomes[good.key].ok
    assert compiled.snapshot.relay_domains == ["x.example"]
    assert compiled.snapshot.virtual_alias_maps == {}
    assert compiled.errors == {bad.key: compiled.outcomes[bad.key].error}


# -- Transport errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"transport": "smtp"}, "spec.match is required"),
        (
            {"match": "@x.example", "transport": "smtp"},
            'spec.match "@x.example" is not a transport(5) key: '
            "use domain, .domain, user@domain or *",
        ),
        (
            {"match": "x_y.example", "transport": "smtp"},
            'spec.match "x_y.example" is not a valid domain name',
        ),
        (
            {"match": "..example", "transport": "smtp"},
            'spec.match ".example" is not a valid domain name',
        ),
        (
            {"match": "a b@x.example", "transport": "smtp"},
            'spec.match "a b@x.example" is not an address (user@domain)',
        ),
        ({"match": "x.example"}, "spec.transport is required"),
        (
            {"match": "x.example", "transport": "my transport"},
            'spec.transport "my transport" is not a master.cf service name',
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": "mx.example"},
            "spec.nexthop must be a mapping (host, port, mx)",
        ),
        (
            {"match": "x.example", "transport": "error", "message": 550},
            "spec.message must be a string",
        ),
        (
            {"match": "x.example", "transport": "error", "nexthop": {"host": "mx.example"}},
            "transport error takes no nexthop: put the text in spec.message",
        ),
        (
            {"match": "x.example", "transport": "discard", "nexthop": {"port": 25}},
            "transport discard takes no nexthop: put the text in spec.message",
        ),
        (
            {"match": "x.example", "transport": "error", "message": "two\nlines"},
            "spec.message must be one line",
        ),
        (
            {"match": "x.example", "transport": "smtp", "message": "hello"},
            "spec.message is only used by the error and discard transports",
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"host": 7}},
            "nexthop.host must be a string",
        ),
        (
            {
                "match": "x.example",
                "transport": "smtp",
                "nexthop": {"host": "m.example", "mx": "no"},
            },
            "nexthop.mx must be true or false",
        ),
        (
            {
                "match": "x.example",
                "transport": "smtp",
                "nexthop": {"host": "m.example", "port": 0},
            },
            "nexthop.port 0 is not a TCP port (1-65535)",
        ),
        (
            {
                "match": "x.example",
                "transport": "smtp",
                "nexthop": {"host": "m.example", "port": 70000},
            },
            "nexthop.port 70000 is not a TCP port (1-65535)",
        ),
        (
            {
                "match": "x.example",
                "transport": "smtp",
                "nexthop": {"host": "m.example", "port": True},
            },
            "nexthop.port True is not a TCP port (1-65535)",
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"port": 25}},
            "nexthop.port needs nexthop.host",
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"mx": False}},
            "nexthop.mx: false needs nexthop.host",
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"host": "ipv6:nothex"}},
            'nexthop.host "ipv6:nothex" is not an IPv6 address',
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"host": "192.0.2.1"}},
            'nexthop.host "192.0.2.1" is an IP address: '
            "set nexthop.mx to false (Postfix [192.0.2.1])",
        ),
        (
            {"match": "x.example", "transport": "smtp", "nexthop": {"host": "bad_host"}},
            'nexthop.host "bad_host" is not a valid domain name',
        ),
        (
            {
                "match": "x.example",
                "transport": "local",
                "nexthop": {"host": "m.example", "port": 24},
            },
            "transport local takes no nexthop.port",
        ),
        (
            {"match": "x.example", "transport": "smtp", "concurrencyLimit": 0},
            "spec.concurrencyLimit must be a positive integer",
        ),
        (
            {"match": "x.example", "transport": "smtp", "authSecretRef": {"key": "password"}},
            "spec.authSecretRef needs a name",
        ),
    ],
)
def test_transport_errors(spec: dict[str, Any], error: str) -> None:
    assert error_of(tr("t", spec)) == error


@pytest.mark.parametrize(
    ("transport", "nexthop", "loops"),
    [
        ("smtp", {"host": "localhost"}, "localhost"),
        ("smtp", {"host": "relay.univ.es", "port": 25}, "relay.univ.es:25"),  # myhostname
        ("relay", {"host": "127.0.0.1", "mx": False}, "[127.0.0.1]"),
        ("smtp", {"host": "ipv6:::1", "mx": False}, "[::1]"),
        ("smtp", {"host": "mail.local.example", "mx": False}, "[mail.local.example]"),
        ("smtp", {"host": "localhost", "port": 10025}, None),  # a re-injection port
        ("lmtp", {"host": "localhost", "port": 24}, None),  # local LMTP is normal
        ("smtp", {"host": "mx.elsewhere.example"}, None),
    ],
)
def test_transport_loops_back_to_myself(
    transport: str, nexthop: dict[str, Any], loops: str | None
) -> None:
    local = md("l", {"domain": "mail.local.example", "class": "local"})
    error = error_of(
        local, tr("t", {"match": "x.example", "transport": transport, "nexthop": nexthop})
    )
    if loops is None:
        assert error is None
    else:
        assert error == (
            f'nexthop "{loops}" is this mail system: mail for "x.example" would loop back to myself'
        )


def test_a_transport_match_is_routed_once() -> None:
    first = tr("b", {"match": "x.example", "transport": "relay"}, "2026-01-01T00:00:00Z")
    again = tr("a", {"match": "X.example.", "transport": "smtp"}, "2026-01-02T00:00:00Z")
    compiled = build(again, first)
    assert compiled.outcomes[first.key].ok
    assert compiled.outcomes[again.key].error == (
        'match "x.example" is already routed by Transport mail/b'
    )
    assert compiled.snapshot.transport_maps == {"x.example": "relay:"}


def test_base_transport_entries_are_claimed() -> None:
    base = BASE.model_copy(update={"transport_maps": {"*": "smtp:[smarthost.example]"}})
    assert error_of(tr("t", {"match": "*", "transport": "relay"}), base=base) == (
        'match "*" is already routed by the operator\'s routing configuration'
    )


def test_one_bad_resource_never_breaks_the_good_ones() -> None:
    resources = [
        md("ok1", {"domain": "a.example", "class": "local"}),
        md("bad1", {"domain": "not a domain", "class": "local"}),
        tr("bad2", {"match": "b.example", "transport": "smtp", "nexthop": {"port": 2}}),
        tr("ok2", {"match": "b.example", "transport": "relay"}),
        Resource("Widget", "mail", "odd", {}),
    ]
    compiled = build(*resources)
    assert set(compiled.errors) == {r.key for r in resources if r.name != "ok1"} - {
        ("Transport", "mail", "ok2")
    }
    assert compiled.errors[("Widget", "mail", "odd")] == "unknown kind Widget"
    assert compiled.snapshot.mydestination[-1] == "a.example"
    assert compiled.snapshot.transport_maps == {"b.example": "relay:"}


ED25519_KEY = keys.generate("ed25519").decode()


@pytest.mark.parametrize(("dkim", "data", "message"), [
    ({"selector": "s1", "secretRef": {"name": "k"}}, {"private.key": ED25519_KEY},
     'Secret mail/k key "private.key" is an ed25519 key, spec.dkim.algorithm is '
     "rsa-sha256"),
    ({"selector": "s1", "secretRef": {"name": "k"}}, {"other": ED25519_KEY},
     'Secret mail/k has no key "private.key"'),
    ({"selector": "bad selector", "secretRef": {"name": "k"}}, {},
     "spec.dkim.selector 'bad selector' is not a selector"),
    ({"selector": "s1", "algorithm": "rsa-sha1", "secretRef": {"name": "k"}}, {},
     "spec.dkim.algorithm 'rsa-sha1': use rsa-sha256 or ed25519-sha256"),
    ({"selector": "s1", "secretRef": {"name": "k", "key": "x"}}, {"x": "not a key"},
     'Secret mail/k key "x": neither a PEM RSA key nor a base64 Ed25519 seed (32 bytes)'),
])
def test_a_dkim_problem_stops_signing_not_routing(
        dkim: dict[str, Any], data: dict[str, str], message: str) -> None:
    res = md("a", {"domain": "example.org", "class": "relay", "dkim": dkim})
    compiled = compile_routing([res], BASE, {("mail", "k"): data})
    outcome = compiled.outcomes[res.key]
    assert outcome.ok and outcome.dkim is not None
    assert (outcome.dkim["signing"], outcome.dkim["message"]) == (False, message)
    assert compiled.dkim_keys == {}
    assert "example.org" in compiled.snapshot.relay_domains


def test_a_signing_key_is_returned_apart_from_the_snapshot() -> None:
    res = md("a", {"domain": "example.org", "class": "relay", "dkim": {
        "selector": "e1", "algorithm": "ed25519-sha256", "secretRef": {"name": "k"}}})
    compiled = compile_routing([res], BASE, {("mail", "k"): {"private.key": ED25519_KEY}})
    assert compiled.dkim_keys == {"e1._domainkey.example.org": ED25519_KEY}
    dkim = compiled.outcomes[res.key].dkim
    assert dkim is not None and dkim["signing"] is True
    assert dkim["dnsRecord"] == keys.dns_record("e1", "example.org", ED25519_KEY.encode())
    assert ED25519_KEY not in compiled.snapshot.to_json().decode()
