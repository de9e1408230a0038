"""Routing is data (DESIGN invariant 6): a new snapshot published to NATS KV
while every role runs changes where the next message goes -- cleanup's
virtual alias rewriting, qmgr's transport choice and ingress-smtp's RCPT
verdict -- with no restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from postfleet.core.testing.cluster import Cluster
from postfleet.core.testing.sink import SmtpSink

from .conftest import eventually, publish_routes, relay_config, send, start

pytestmark = pytest.mark.slow


async def _in_force(cluster: Cluster, version: int, *roles: str) -> None:
    line = f"routing snapshot version {version} in force"
    for role in roles:
        await eventually(lambda r=role: line in cluster.roles[r].log(),  # type: ignore[misc]
                         what=f"{role} to follow snapshot {version}")


async def test_a_transport_change_in_kv_reroutes_the_next_message(
        database_url: str, make_cluster: Callable[..., Cluster]) -> None:
    with SmtpSink() as first, SmtpSink() as second:
        cfg = relay_config(first, virtual_alias_domains=["alias.test"],
                           virtual_alias_maps={"team@alias.test": ["bob@example.test"]})
        cluster = await start(make_cluster(database_url, cfg))
        await _in_force(cluster, 1, "cleanup", "qmgr", "ingress-smtp")

        await send(cluster.smtp_port, "team@alias.test")
        (got,) = await first.wait_for(1)
        assert got.recipients == ["bob@example.test"]

        # New tables: example.test now goes to the second next hop, the alias
        # to another user, and a new virtual alias domain exists.
        cluster.config["routing"].update(
            transport_maps={"example.test": f"smtp:{second.nexthop}"},
            virtual_alias_domains=["alias.test", "new.test"],
            virtual_alias_maps={"team@alias.test": ["carol@example.test"],
                                "info@new.test": ["dave@example.test"]})
        await publish_routes(cluster)
        await _in_force(cluster, 2, "cleanup", "qmgr", "ingress-smtp")

        await send(cluster.smtp_port, "team@alias.test")
        await send(cluster.smtp_port, "info@new.test")
        received = await second.wait_for(2)
        assert sorted(r.recipients[0] for r in received) == ["carol@example.test",
                                                              "dave@example.test"]
        await asyncio.sleep(0.5)
        assert len(first.messages) == 1  # nothing more went the old way
