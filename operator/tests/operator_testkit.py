"""The operator's test kit: the real kopf operator in-process against KMock,
and helpers to create resources and wait for their statuses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import kmock
import kopf
import nats
from kmock_support import KopfEmulator
from kubernetes_asyncio import client as k8s
from nats.js import JetStreamContext

from postfleet.core.bus.connect import routing_bucket
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import read_snapshot
from postfleet.operator.handlers import RoutingOperator, kopf_settings
from postfleet.operator.secrets import KubernetesSecrets

NAMESPACE = "default"
API = f"/apis/postfleet.io/v1alpha1/namespaces/{NAMESPACE}"
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
T = TypeVar("T")


class ThreadedOperator:
    """The real kopf operator with our handlers, logged in to KMock, on its own
    thread and event loop (with its own NATS connection).

    Not on the test's loop: when kopf stops it cancels every task started
    after it, which would include the test's own teardown.
    """

    def __init__(self, url: str, nats_url: str, base: RoutingSnapshot | None) -> None:
        self.url = url.rstrip("/")
        # Where the operator writes smtp_sasl_password_maps (as the chart names it).
        self.sasl_secret = (NAMESPACE, "postfleet-sasl-passwords")
        self.nats_url = nats_url
        self.base = base
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()

    async def start(self) -> ThreadedOperator:
        self.thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self.thread.start()
        ready = await asyncio.to_thread(self._ready.wait, 15)
        if not ready:
            await self.stop()
            raise AssertionError(f"kopf did not become ready: {self.error!r}")
        return self

    async def stop(self) -> None:
        thread, self.thread = self.thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join, 20)
        if thread.is_alive():
            raise AssertionError("kopf did not stop within 20 s")
        if self.error is not None:
            raise AssertionError(f"the operator failed: {self.error!r}") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by stop()
            self.error = exc

    async def _main(self) -> None:
        nc = await nats.connect(self.nats_url)
        stack = contextlib.AsyncExitStack()
        try:
            js = nc.jetstream()
            # As main does: the first request starts nats-py's reply task before kopf
            # (kopf waits for, then cancels, tasks born while it ran).
            await routing_bucket(js)
            api = k8s.ApiClient(k8s.Configuration(host=self.url))
            stack.push_async_callback(api.close)
            secrets = KubernetesSecrets(api, *self.sasl_secret)
            state = RoutingOperator(js, self.base, status_interval=0.3, retry_delay=0.5,
                                    secrets=secrets)
            registry = state.register(kopf.OperatorRegistry())

            def login(**_: Any) -> kopf.ConnectionInfo:
                return kopf.ConnectionInfo(server=self.url)

            kopf.on.login(registry=registry)(login)
            settings = kopf_settings()
            settings.watching.reconnect_backoff = 0.1
            settings.networking.error_backoffs = [0.1, 0.2, 0.5]
            settings.queueing.idle_timeout = 0.5  # workers linger this long at exit
            # kopf ends cancelled when its stop flag is set.
            with contextlib.suppress(asyncio.CancelledError):
                await kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=True,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
        finally:
            await stack.aclose()
            await nc.close()


# -- helpers ------------------------------------------------------------------------
async def eventually(
    probe: Callable[[], Awaitable[T | None] | T | None], timeout: float = 10.0, what: str = ""
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while True:
        result = probe()
        last = await result if isinstance(result, Awaitable) else result
        if last:
            return last  # type: ignore[no-any-return]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or probe}: last {last!r}")
        await asyncio.sleep(0.05)


async def create(cluster: KopfEmulator, plural: str, name: str, spec: dict[str, Any]) -> None:
    kind = {"maildomains": "MailDomain", "transports": "Transport"}[plural]
    body = {
        "apiVersion": "postfleet.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    async with cluster.post(f"{API}/{plural}", json=body) as resp:
        assert resp.status < 300, await resp.text()


async def patch_spec(cluster: KopfEmulator, plural: str, name: str, spec: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/merge-patch+json"}
    async with cluster.patch(f"{API}/{plural}/{name}", json={"spec": spec}, headers=headers) as r:
        assert r.status < 300, await r.text()


async def delete(cluster: KopfEmulator, plural: str, name: str) -> None:
    async with cluster.delete(f"{API}/{plural}/{name}") as resp:
        assert resp.status < 300, await resp.text()


def get(cluster: KopfEmulator, plural: str, name: str) -> dict[str, Any] | None:
    key = (kmock.resource("postfleet.io", "v1alpha1", plural), NAMESPACE, name)
    if key not in cluster.objects:
        return None
    obj = cluster.objects[key]
    return None if obj.deleted else obj.raw


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return dict(cond)
    return {}


async def wait_status(
    cluster: KopfEmulator, plural: str, name: str, ready: str, generation: int = 1
) -> dict[str, Any]:
    """Wait until the resource's status reports ``ready`` for ``generation``."""

    def probe() -> dict[str, Any] | None:
        obj = get(cluster, plural, name)
        status = (obj or {}).get("status") or {}
        ok = (
            ready_condition(obj).get("status") == ready
            and status.get("observedGeneration") == generation
        )
        return status if ok else None

    return await eventually(probe, what=f"{plural}/{name} Ready={ready} gen {generation}")


def events_for(cluster: KopfEmulator, name: str) -> list[dict[str, Any]]:
    return [
        obj.raw
        for (res, _, _), obj in cluster.objects.items()
        if res == kmock.resource("v1/events")
        and not obj.deleted
        and obj.raw.get("involvedObject", {}).get("name") == name
    ]


async def current_snapshot(js: JetStreamContext) -> RoutingSnapshot | None:
    return await read_snapshot(js)


def encoded(data: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


async def put_secret(cluster: KopfEmulator, name: str, data: dict[str, str]) -> None:
    """Create the Secret, or change its data."""
    if secret(cluster, name) is None:
        body = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE}, "data": encoded(data)}
        async with cluster.post(SECRETS, json=body) as resp:
            assert resp.status < 300, await resp.text()
        return
    headers = {"Content-Type": "application/merge-patch+json"}
    async with cluster.patch(f"{SECRETS}/{name}", json={"data": encoded(data)},
                             headers=headers) as resp:
        assert resp.status < 300, await resp.text()


def secret(cluster: KopfEmulator, name: str) -> dict[str, str] | None:
    key = (kmock.resource("v1/secrets"), NAMESPACE, name)
    if key not in cluster.objects or cluster.objects[key].deleted:
        return None
    data: dict[str, Any] = cluster.objects[key].raw.get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}
