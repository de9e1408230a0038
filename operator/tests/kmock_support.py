"""A thin KMock 0.8 subclass that behaves enough like kube-apiserver for kopf.

What KMock's emulator lacks and kopf needs:

- ``metadata.resourceVersion`` bumped on every write (kopf's JSON-patches
  start with a ``test`` of it), and 422 when such a ``test`` fails;
  ``generation`` bumped on spec changes, ``uid``/``creationTimestamp`` set,
  ``generateName`` honoured (kopf's Events);
- a watch that subscribes to the bus before replaying the existing objects
  (KMock replays first, so events in between are lost), and replays only
  what changed after the ``resourceVersion`` it is asked to watch from;
- ``kind``/``apiVersion`` on lists;
- namespaces, CRDs and events declared (kopf waits for them otherwise), and
  ``/api/v1/namespaces`` served here: KMock's path parser takes the word
  ``namespaces`` there for a namespace prefix and fails (kopf lists and
  watches namespaces when it serves named namespaces).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import rendering

CRD_RESOURCE = "apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "postfleet" / "crds"
ALL_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
NAMESPACES_PATH = re.compile(r"/api/v1/namespaces(?:/([^/]+))?")


@attrs.define(kw_only=True)
class KopfEmulator(kmock.KubernetesEmulator):
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    namespace_names: list[str] = attrs.field(factory=list)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = NAMESPACES_PATH.fullmatch(raw_request.path)
        if match is None or raw_request.method != "GET":
            return await super().__call__(raw_request)
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "uid": ns}}
            for ns in self.namespace_names
        ]
        if match.group(1):
            found = [i for i in items if i["metadata"]["name"] == match.group(1)]
            if not found:
                return aiohttp.web.json_response({"kind": "Status", "code": 404}, status=404)
            return aiohttp.web.json_response(found[0])
        if raw_request.query.get("watch") == "true":
            # Namespaces never change here: an open, silent stream.
            response = aiohttp.web.StreamResponse()
            await response.prepare(raw_request)
            await asyncio.Event().wait()
        listing = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items}
        return aiohttp.web.json_response(listing)

    def _next_version(self) -> str:
        return str(next(self._versions))

    def _current(self, request: rendering.Request) -> kmock.Object | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj

    def _stamp(self, request: rendering.Request) -> None:
        """Fill in what the API server writes itself, in the request's payload."""
        action, data = request.action, request.data
        if action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            if request.namespace:
                meta.setdefault("namespace", request.namespace)
            meta.update(
                uid=str(uuid.uuid4()),
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime(
                    "%Y-%m-%dT%H:%M:%SZ"
                ),
                generation=1,
                resourceVersion=self._next_version(),
            )
        elif action == kmock.action.UPDATE and request.name is not None:
            current = self._current(request)
            generation = int((current or {}).get("metadata", {}).get("generation") or 0)
            main = request.subresource is None
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = self._next_version()
                if main and "spec" in data:
                    meta["generation"] = generation + 1
            elif isinstance(data, list):
                version = self._next_version()
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if main and any(str(op.get("path", "")).startswith("/spec") for op in data):
                    data.append(
                        {"op": "add", "path": "/metadata/generation", "value": generation + 1}
                    )
        elif action == kmock.action.DELETE and request.name is not None:
            current = self._current(request)
            meta = (current or {}).get("metadata", {})
            if current is not None and meta.get("finalizers") and not meta.get("deletionTimestamp"):
                # The deletion marks the object: that write gets a new version too.
                current.patch({"metadata": {"resourceVersion": self._next_version()}})

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            self._stamp(request)
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc

    def _matches(self, request: rendering.Request, key: tuple[Any, str | None, str]) -> bool:
        resource, namespace, name = key
        return bool(
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        )

    async def _serve_list(self, request: rendering.Request) -> Any:
        payload = await super()._serve_list(request)
        assert request.resource is not None
        res = request.resource
        info = self.resources[res]
        payload["apiVersion"] = f"{res.group}/{res.version}" if res.group else res.version
        payload["kind"] = f"{info.kind or 'Object'}List"
        payload["metadata"] = {"resourceVersion": self._next_version()}
        return payload

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        # Watching from a listed resourceVersion: replay only what changed since.
        since = request.params.get("resourceVersion", "")
        since_version = int(since) if since.isdigit() else 0
        # Subscribe first, then take the replay under the same lock as the writers.
        async with self._lock:
            mark = await bus.mark()
            replay = [
                {"type": "ADDED", "object": obj.raw}
                for key, obj in self.objects.items()
                if self._matches(request, key)
                and not obj.deleted
                and int(obj.raw.get("metadata", {}).get("resourceVersion") or 0) > since_version
            ]
        try:
            for event in replay:
                yield event
            async for event in bus.stream(since=mark):
                meta = event.get("object", {}).get("metadata", {})
                key = (request.resource, meta.get("namespace"), meta.get("name"))
                if self._matches(request, key):
                    yield event
        finally:
            await bus.unmark(mark)


def load_crds(directory: Path = CRD_DIR) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def declare_cluster(
    emulator: KopfEmulator, crds: Iterable[Mapping[str, Any]], namespaces: Iterable[str]
) -> None:
    """Namespaces, events, the CRDs and their resources: what kopf looks for."""
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", singular="namespace", namespaced=False, verbs=ALL_VERBS
    )
    emulator.namespace_names.extend(namespaces)
    emulator.resources["v1/events"] = kmock.ResourceInfo(
        kind="Event", singular="event", namespaced=True, verbs=ALL_VERBS
    )
    # Secrets: Transport.spec.authSecretRef, and the password table the operator writes.
    emulator.resources["v1/secrets"] = kmock.ResourceInfo(
        kind="Secret", singular="secret", namespaced=True, verbs=ALL_VERBS
    )
    emulator.resources[CRD_RESOURCE] = kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs=ALL_VERBS,
    )
    for crd in crds:
        spec = crd["spec"]
        names = spec["names"]
        emulator.objects[CRD_RESOURCE, None, crd["metadata"]["name"]] = {
            **crd,
            "metadata": {**crd["metadata"], "resourceVersion": emulator._next_version()},
        }
        for version in spec["versions"]:
            emulator.resources[f"{spec['group']}/{version['name']}/{names['plural']}"] = (
                kmock.ResourceInfo(
                    kind=names["kind"],
                    singular=names.get("singular"),
                    namespaced=spec.get("scope") == "Namespaced",
                    verbs=ALL_VERBS,
                    shortnames=set(names.get("shortNames", [])),
                    categories=set(names.get("categories", [])),
                    subresources=set(version.get("subresources", {})),
                )
            )
