"""The real kopf operator against KMock and a real NATS JetStream: resources in,
routing snapshot in KV and Ready statuses out."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

# The support modules sit next to this file (see operator_fixtures).
sys.path.insert(0, str(Path(__file__).parent))

import operator_fixtures as fixtures
from kmock_support import KopfEmulator
from nats.js import JetStreamContext
from operator_testkit import (
    ThreadedOperator,
    create,
    current_snapshot,
    delete,
    events_for,
    eventually,
    get,
    patch_spec,
    ready_condition,
    wait_status,
)

from postfleet.core.routing.snapshot import RoutingSnapshot

cluster, crds, js = fixtures.cluster, fixtures.crds, fixtures.js
start_operator = fixtures.start_operator

StartOperator = Callable[..., Awaitable[ThreadedOperator]]
FINALIZER = "postfleet.io/routing"


async def snapshot_where(
    js: JetStreamContext, check: Callable[[RoutingSnapshot], bool], what: str
) -> RoutingSnapshot:
    async def probe() -> RoutingSnapshot | None:
        snap = await current_snapshot(js)
        return snap if snap is not None and check(snap) else None

    return await eventually(probe, what=what)


async def test_create_publishes_snapshot_and_ready_status(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    await create(cluster, "maildomains", "univ", {"domain": "univ.es", "class": "local"})
    snap = await snapshot_where(js, lambda s: "univ.es" in s.mydestination, "univ.es local")
    assert snap.version == 1
    status = await wait_status(cluster, "maildomains", "univ", "True")
    assert status["snapshotVersion"] == 1
    cond = ready_condition(get(cluster, "maildomains", "univ"))
    assert cond["reason"] == "Published"
    assert cond["observedGeneration"] == 1
    assert FINALIZER in get(cluster, "maildomains", "univ")["metadata"]["finalizers"]  # type: ignore[index]

    await create(
        cluster,
        "maildomains",
        "fund",
        {
            "domain": "fund-univ.es",
            "class": "virtualAlias",
            "aliases": {"info@fund-univ.es": ["secretaria@univ.es", "director@univ.es"]},
        },
    )
    await create(
        cluster,
        "transports",
        "dept",
        {
            "match": ".dept.univ.es",
            "transport": "smtp",
            "nexthop": {"host": "mail.dept.univ.es", "port": 2525, "mx": False},
        },
    )
    await create(
        cluster,
        "transports",
        "gone",
        {"match": "old@univ.es", "transport": "error", "message": "5.1.1 moved away"},
    )
    for plural, name in [("maildomains", "fund"), ("transports", "dept"), ("transports", "gone")]:
        await wait_status(cluster, plural, name, "True")
    snap = await snapshot_where(js, lambda s: len(s.transport_maps) == 2, "both transports")
    assert snap.mydestination[-1] == "univ.es"
    assert snap.virtual_alias_domains == ["fund-univ.es"]
    assert snap.virtual_alias_maps == {
        "info@fund-univ.es": ["secretaria@univ.es", "director@univ.es"]
    }
    assert snap.transport_maps == {
        ".dept.univ.es": "smtp:[mail.dept.univ.es]:2525",
        "old@univ.es": "error:5.1.1 moved away",
    }
    # Each status names the snapshot its generation first appeared in.
    versions = [
        get(cluster, p, n)["status"]["snapshotVersion"]  # type: ignore[index]
        for p, n in [("maildomains", "univ"), ("transports", "dept"), ("transports", "gone")]
    ]
    assert versions[0] == 1
    assert 1 < versions[1] <= snap.version and 1 < versions[2] <= snap.version
    # The role's view: the resolver reads what the operator compiled.
    from postfleet.core.routing.resolver import resolve

    route = resolve(snap, "someone@lab.dept.univ.es")
    assert (route.transport, route.nexthop) == ("smtp", "[mail.dept.univ.es]:2525")
    assert any(e.get("reason") == "Published" for e in events_for(cluster, "univ"))


async def test_update_transport_publishes_a_new_version(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    spec: dict[str, Any] = {
        "match": "partner.example",
        "transport": "smtp",
        "nexthop": {"host": "mx1.partner.example"},
    }
    await create(cluster, "transports", "partner", spec)
    first = await wait_status(cluster, "transports", "partner", "True")
    before = await current_snapshot(js)
    assert before is not None
    assert before.transport_maps == {"partner.example": "smtp:mx1.partner.example"}

    await patch_spec(
        cluster, "transports", "partner", {"nexthop": {"host": "10.1.2.3", "mx": False}}
    )
    after = await snapshot_where(
        js, lambda s: s.transport_maps.get("partner.example") == "smtp:[10.1.2.3]", "update"
    )
    assert after.version == before.version + 1
    status = await wait_status(cluster, "transports", "partner", "True", generation=2)
    assert status["snapshotVersion"] == after.version
    assert status["snapshotVersion"] > first["snapshotVersion"]


async def test_delete_takes_the_entry_out_then_releases_the_object(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    await create(cluster, "maildomains", "relay", {"domain": "dept.example", "class": "relay"})
    await create(
        cluster,
        "transports",
        "dept",
        {
            "match": "dept.example",
            "transport": "lmtp",
            "nexthop": {"host": "dovecot.mail", "port": 24},
        },
    )
    await wait_status(cluster, "transports", "dept", "True")
    await wait_status(cluster, "maildomains", "relay", "True")
    await snapshot_where(js, lambda s: "dept.example" in s.transport_maps, "transport in")

    await delete(cluster, "transports", "dept")
    snap = await snapshot_where(js, lambda s: "dept.example" not in s.transport_maps, "gone")
    assert snap.relay_domains == ["dept.example"]
    # The finalizer is removed once the entry is out, and the object goes.
    await eventually(lambda: get(cluster, "transports", "dept") is None, what="object deleted")
    await delete(cluster, "maildomains", "relay")
    snap = await snapshot_where(js, lambda s: not s.relay_domains, "relay domain gone")
    await eventually(lambda: get(cluster, "maildomains", "relay") is None, what="deleted")


async def test_invalid_resources_are_reported_and_good_ones_kept(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    await start_operator()
    await create(
        cluster,
        "transports",
        "first",
        {"match": "example.net", "transport": "smtp", "nexthop": {"host": "a.example.net"}},
    )
    await wait_status(cluster, "transports", "first", "True")
    await create(
        cluster,
        "transports",
        "second",
        {"match": "example.net", "transport": "smtp", "nexthop": {"host": "b.example.net"}},
    )
    await create(cluster, "maildomains", "a-relay", {"domain": "example.com", "class": "relay"})
    await wait_status(cluster, "maildomains", "a-relay", "True")
    await create(cluster, "maildomains", "b-local", {"domain": "example.com", "class": "local"})
    await create(
        cluster,
        "transports",
        "loop",
        {"match": "*", "transport": "smtp", "nexthop": {"host": "localhost"}},
    )
    await create(cluster, "transports", "third", {"match": "other.net", "transport": "relay"})

    second = await wait_status(cluster, "transports", "second", "False")
    assert second["message"] == 'match "example.net" is already routed by Transport default/first'
    cond = ready_condition(get(cluster, "transports", "second"))
    assert cond["reason"] == "Invalid" and cond["message"] == second["message"]
    local = await wait_status(cluster, "maildomains", "b-local", "False")
    assert local["message"] == (
        'domain "example.com" is already claimed by MailDomain default/a-relay (class relay)'
    )
    loop = await wait_status(cluster, "transports", "loop", "False")
    assert loop["message"] == (
        'nexthop "localhost" is this mail system: mail for "*" would loop back to myself'
    )
    await wait_status(cluster, "transports", "third", "True")
    snap = await snapshot_where(js, lambda s: "other.net" in s.transport_maps, "third in")
    assert snap.transport_maps == {"example.net": "smtp:a.example.net", "other.net": "relay:"}
    assert snap.relay_domains == ["example.com"]
    assert "example.com" not in snap.mydestination
    assert any(
        e.get("type") == "Warning" and e.get("reason") == "Invalid"
        for e in events_for(cluster, "second")
    )

    # The older claim goes away: the newcomer takes over, with no change of its own.
    await delete(cluster, "transports", "first")
    second = await wait_status(cluster, "transports", "second", "True")
    snap = await snapshot_where(
        js, lambda s: s.transport_maps.get("example.net") == "smtp:b.example.net", "takeover"
    )
    assert second["snapshotVersion"] == snap.version


async def test_base_tables_from_settings_are_kept(
    cluster: KopfEmulator, js: JetStreamContext, start_operator: StartOperator
) -> None:
    base = RoutingSnapshot.from_config(
        {"relayhost": "[smarthost.univ.es]", "mynetworks": ["10.0.0.0/8"]},
        myhostname="relay.univ.es",
    )
    await start_operator(base)
    await create(
        cluster,
        "transports",
        "self",
        {"match": "univ.es", "transport": "smtp", "nexthop": {"host": "relay.univ.es"}},
    )
    status = await wait_status(cluster, "transports", "self", "False")
    assert "loop back to myself" in status["message"]
    await create(cluster, "maildomains", "univ", {"domain": "univ.es", "class": "relay"})
    await wait_status(cluster, "maildomains", "univ", "True")
    snap = await snapshot_where(js, lambda s: s.relay_domains == ["univ.es"], "relay univ.es")
    assert snap.relayhost == "[smarthost.univ.es]"
    assert snap.mynetworks == ["10.0.0.0/8"]
    assert snap.myhostname == "relay.univ.es"
    assert snap.transport_maps == {}
