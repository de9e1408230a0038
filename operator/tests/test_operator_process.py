"""``python -m postfleet.operator`` as a real process (settings from the
environment, $KUBECONFIG login, /healthz /readyz /metrics, SIGTERM) against
KMock and NATS: a restart rebuilds the same snapshot."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

# The support modules sit next to this file (see operator_fixtures).
sys.path.insert(0, str(Path(__file__).parent))

import httpx
import operator_fixtures as fixtures
import yaml
from kmock_support import KopfEmulator
from nats.js import JetStreamContext
from operator_testkit import (
    create,
    current_snapshot,
    eventually,
    get,
    patch_spec,
    wait_status,
)

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import routing_bucket
from postfleet.core.testing.nats import NatsServer
from postfleet.core.testing.ports import free_port

cluster, crds, js = fixtures.cluster, fixtures.crds, fixtures.js


class OperatorProcess:
    def __init__(self, env: dict[str, str], log_path: Path, http_port: int) -> None:
        self.env = env
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.proc: asyncio.subprocess.Process | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "postfleet.operator",
                env=self.env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1) as client:

            async def ready() -> bool:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError(f"operator exited:\n{self.log()}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout=20, what="/readyz")
            assert (await client.get("/healthz")).status_code == 200

    async def metric(self, name: str) -> float | None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=1) as client:
            text = (await client.get("/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"operator ignored SIGTERM:\n{self.log()}") from None
        assert proc.returncode == 0, self.log()


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
                "current-context": "kmock",
            }
        )
    )
    return path


def without_version(snapshot: Any) -> dict[str, Any]:
    return snapshot.model_dump(exclude={"version"})  # type: ignore[no-any-return]


async def test_restarted_operator_rebuilds_the_same_snapshot(
    cluster: KopfEmulator, js: JetStreamContext, nats_server: NatsServer, tmp_path: Path
) -> None:
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTFLEET_", "KUBE"))}
    env.update(
        KUBECONFIG=str(kubeconfig(tmp_path / "kubeconfig", str(cluster.url).rstrip("/"))),
        POSTFLEET_NATS_URL=nats_server.url,
        POSTFLEET_HTTP_PORT=str(http_port),
        POSTFLEET_MYHOSTNAME="relay.univ.es",
        POSTFLEET_OPERATOR_NAMESPACE="default",
        POSTFLEET_STATUS_INTERVAL="0.3",
        POSTFLEET_LOG_FORMAT="text",
    )
    operator = OperatorProcess(env, tmp_path / "operator.log", http_port)
    try:
        await operator.start()
        await create(cluster, "maildomains", "univ", {"domain": "univ.es", "class": "relay"})
        await create(
            cluster,
            "maildomains",
            "fund",
            {
                "domain": "fund-univ.es",
                "class": "virtualAlias",
                "aliases": {"@fund-univ.es": ["fundacion@univ.es"]},
            },
        )
        await create(
            cluster,
            "transports",
            "smtp",
            {"match": "univ.es", "transport": "smtp", "nexthop": {"host": "smtp.univ.es"}},
        )
        await create(
            cluster,
            "transports",
            "self",
            {"match": ".univ.es", "transport": "smtp", "nexthop": {"host": "relay.univ.es"}},
        )
        for plural, name in [("maildomains", "univ"), ("maildomains", "fund"),
                             ("transports", "smtp")]:  # fmt: skip
            await wait_status(cluster, plural, name, "True")
        invalid = await wait_status(cluster, "transports", "self", "False")
        assert invalid["message"] == (
            'nexthop "relay.univ.es" is this mail system: '
            'mail for ".univ.es" would loop back to myself'
        )
        first = await current_snapshot(js)
        assert first is not None
        assert first.relay_domains == ["univ.es"]
        assert first.transport_maps == {"univ.es": "smtp:smtp.univ.es"}
        assert first.myhostname == "relay.univ.es"
        await operator.stop()

        # Restart: the recompiled snapshot is the same, so no new version.
        await operator.start()

        async def reconciled() -> bool:
            return await operator.metric("postfleet_operator_snapshot_version") == first.version

        await eventually(reconciled, what="a reconcile after the restart")
        assert await current_snapshot(js) == first
        assert await operator.metric("postfleet_operator_invalid_resources") == 1.0
        await operator.stop()

        # Restart with the KV entry gone: rebuilt from the resources alone.
        kv = await routing_bucket(js)
        await kv.purge(subjects.ROUTING_KEY)
        assert await current_snapshot(js) is None
        await operator.start()
        rebuilt = await eventually(lambda: current_snapshot(js), what="a rebuilt snapshot")
        assert without_version(rebuilt) == without_version(first)

        def renumbered() -> dict[str, Any] | None:
            status = (get(cluster, "transports", "self") or {}).get("status") or {}
            return status if status.get("snapshotVersion") == rebuilt.version else None

        # Same verdict; the status now points at the rebuilt snapshot's number.
        assert await eventually(renumbered) == invalid | {"snapshotVersion": rebuilt.version}
        await operator.stop()

        # A change made while the operator is down is picked up when it returns.
        await patch_spec(cluster, "transports", "smtp", {"nexthop": {"port": 2525}})
        await operator.start()
        status = await wait_status(cluster, "transports", "smtp", "True", generation=2)
        changed = await current_snapshot(js)
        assert changed is not None
        assert changed.transport_maps == {"univ.es": "smtp:smtp.univ.es:2525"}
        assert status["snapshotVersion"] == changed.version == rebuilt.version + 1
        assert get(cluster, "transports", "self") is not None
    finally:
        await operator.stop()
