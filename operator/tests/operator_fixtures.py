"""Fixtures for the operator's tests: KMock standing for kube-apiserver (with
the chart's CRDs), a real NATS + JetStream (the core plugin's ``nats_server``)
and the real kopf operator running in-process against both.

Why no conftest.py and no relative imports: under --import-mode=importlib,
pytest names modules after their path. Without ``__init__.py`` this directory
would be ``operator.tests`` and shadow the stdlib ``operator`` module; with it
(as here) it is ``tests``, which the top-level tests/ directory also is. So
test modules put this directory on sys.path and import the support modules
(operator_fixtures, operator_testkit, kmock_support) by those unique names,
and their fixtures from here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kmock
import nats
import pytest
from kmock_support import CRD_DIR, KopfEmulator, declare_cluster, load_crds
from nats.js import JetStreamContext
from operator_testkit import NAMESPACE, ThreadedOperator

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.testing.nats import NatsServer

StartOperator = Callable[..., Awaitable[ThreadedOperator]]


@pytest.fixture(scope="session")
def crds() -> list[dict[str, Any]]:
    docs = load_crds()
    kinds = {d["spec"]["names"]["kind"] for d in docs}
    assert {"MailDomain", "Transport"} <= kinds, f"CRDs missing in {CRD_DIR}: {kinds}"
    return docs


@pytest.fixture
async def cluster(crds: list[dict[str, Any]]) -> AsyncIterator[KopfEmulator]:
    async with KopfEmulator() as emulator, kmock.Server(emulator):
        declare_cluster(emulator, crds, [NAMESPACE])
        yield emulator


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
async def start_operator(
    cluster: KopfEmulator, nats_server: NatsServer
) -> AsyncIterator[Callable[..., Awaitable[ThreadedOperator]]]:
    started: list[ThreadedOperator] = []

    async def start(base: RoutingSnapshot | None = None) -> ThreadedOperator:
        op = ThreadedOperator(str(cluster.url), nats_server.url, base)
        started.append(op)
        return await op.start()

    yield start
    for op in started:
        await op.stop()
