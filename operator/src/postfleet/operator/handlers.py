"""kopf handlers: MailDomain and Transport resources -> one routing snapshot in
NATS KV, and each resource's status (the operator's postmap + ``postfix reload``).

Every create, update, resume and delete recompiles the whole set from kopf
indexes (kopf fills them from its initial listing before any handler runs, so
a restarted operator never publishes a partial set), publishes the snapshot
when its content changed (a new version) and writes the resource's status:
a ``Ready`` condition, the exact error when it is left out, ``snapshotVersion``
(the snapshot in force when the status last changed) and
``observedGeneration``. A resource's status can change because of another one
(a conflict is resolved when the older resource goes away), so a per-resource
timer re-checks it every ``status_interval`` seconds. Deletion runs behind a
finalizer: the entry leaves the snapshot before the object goes.

Transports with ``authSecretRef``: their Secrets are read at each
compilation (and, for rotation, by their status timer), and the compiled
smtp_sasl_password_maps table is written to the delivery role's Secret
(secrets.py) before the snapshot is published, so a Transport is Ready only
once its credentials are in place and its TLS policy is in the snapshot.

MailDomains with ``dkim``: the Secret named in spec.dkim.secretRef is read
at each compilation (and by the status timer, for rotation); with
``generate: true`` and no key there, the operator generates one
(spec.dkim.algorithm) into that Secret first. The signing keys are written
to the cleanup role's Secret before the snapshot is published, and the
domain's ``status.dkim`` says whether it signs and which TXT record to
publish (``dnsRecord``).

Postfix parameters written: see ``compile`` (mydestination, relay_domains,
virtual_alias_domains, virtual_alias_maps, virtual_mailbox_domains,
transport_maps, smtp_tls_policy_maps; smtp_sasl_password_maps apart).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from nats.js import JetStreamContext
from prometheus_client import Gauge

from postfleet.core.mailauth import keys as dkim_keys
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import publish_snapshot, read_snapshot
from postfleet.operator.compile import (
    DEFAULT_DKIM_KEY,
    DKIM_ALGORITHMS,
    MAILDOMAIN,
    TRANSPORT,
    Compiled,
    Outcome,
    Resource,
    ResourceKey,
    SecretData,
    SecretKey,
    compile_routing,
)
from postfleet.operator.secrets import SecretError, SecretStore

log = logging.getLogger(__name__)

GROUP = "postfleet.io"
VERSION = "v1alpha1"
PLURALS = {"maildomains": MAILDOMAIN, "transports": TRANSPORT}
INDEX_IDS = {"maildomains": "maildomain_index", "transports": "transport_index"}

READY = "Ready"
REASON_PUBLISHED = "Published"
REASON_INVALID = "Invalid"
MESSAGE_OK = "in the routing snapshot"

SNAPSHOT_VERSION = Gauge(
    "postfleet_operator_snapshot_version", "Version of the routing snapshot in NATS KV"
)
INVALID_RESOURCES = Gauge(
    "postfleet_operator_invalid_resources", "MailDomain/Transport resources left out"
)


@dataclass(frozen=True)
class Entry:
    """What the kopf index keeps of one resource."""

    resource: Resource
    generation: int | None
    deleting: bool


def entry_from_body(kind: str, body: Mapping[str, Any]) -> Entry:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    resource = Resource(
        kind=kind,
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        spec=copy.deepcopy(dict(spec)) if isinstance(spec, Mapping) else spec,
        created=meta.get("creationTimestamp") or "",
        incumbent=_ready_condition(status).get("status") == "True"
        and status.get("observedGeneration") == meta.get("generation"),
    )
    return Entry(resource, meta.get("generation"), bool(meta.get("deletionTimestamp")))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == READY:
            return cond
    return {}


class RoutingOperator:
    """The operator's state: the latest compilation and the published version."""

    def __init__(
        self,
        js: JetStreamContext,
        base: RoutingSnapshot | None = None,
        *,
        status_interval: float = 5.0,
        retry_delay: float = 5.0,
        secrets: SecretStore | None = None,
    ) -> None:
        self.js = js
        self.secrets = secrets
        self._written: dict[str, str] | None = None  # the password table last written
        self._dkim_written: dict[str, str] | None = None  # the DKIM keys last written
        self.base = base or RoutingSnapshot()
        self.status_interval = status_interval
        self.retry_delay = retry_delay
        self.compiled: Compiled | None = None
        self.version = 0
        self._generations: dict[ResourceKey, int | None] = {}
        self._lock = asyncio.Lock()

    # -- compile + publish ---------------------------------------------------------
    async def reconcile(self, indexes: Iterable[Mapping[Any, Iterable[Entry]]]) -> Compiled:
        """Recompile everything indexed (minus what is being deleted); publish on change."""
        entries = [entry for index in indexes for store in index.values() for entry in store]
        live = [e for e in entries if not e.deleting]
        async with self._lock:
            secrets = await self._read_secrets(e.resource for e in live)
            await self._generate_keys((e.resource for e in live), secrets)
            compiled = compile_routing((e.resource for e in live), self.base, secrets)
            try:
                # Credentials in place before the snapshot that routes to them.
                if self.secrets is not None and compiled.sasl_passwords != self._written:
                    await self.secrets.write_passwords(compiled.sasl_passwords)
                    self._written = dict(compiled.sasl_passwords)
                    log.info("smtp_sasl_password_maps written: %d next hops",
                             len(compiled.sasl_passwords))
                if self.secrets is not None and compiled.dkim_keys != self._dkim_written:
                    await self.secrets.write_dkim_keys(compiled.dkim_keys)
                    self._dkim_written = dict(compiled.dkim_keys)
                    log.info("DKIM signing keys written: %s",
                             ", ".join(compiled.dkim_keys) or "none")
                current = await read_snapshot(self.js)
                if current is None or _content(current) != _content(compiled.snapshot):
                    current = await publish_snapshot(self.js, compiled.snapshot)
                    log.info("published routing snapshot version %d", current.version)
            except Exception as exc:  # NATS or the API down or slow: kopf retries
                raise kopf.TemporaryError(
                    f"cannot publish the routing snapshot: {exc!r}", delay=self.retry_delay
                ) from exc
            self.compiled = compiled
            self.version = current.version
            self._generations = {e.resource.key: e.generation for e in live}
            SNAPSHOT_VERSION.set(current.version)
            INVALID_RESOURCES.set(len(compiled.errors))
            return compiled

    async def _generate_keys(self, resources: Iterable[Resource],
                             found: dict[SecretKey, SecretData]) -> None:
        """spec.dkim.generate: a new key into the named Secret when it has none."""
        if self.secrets is None:
            return
        for res in resources:
            dkim = res.spec.get("dkim") if res.kind == MAILDOMAIN else None
            key = _secret_ref(res)
            if not (isinstance(dkim, Mapping) and dkim.get("generate") and key is not None):
                continue
            item = str((dkim.get("secretRef") or {}).get("key") or DEFAULT_DKIM_KEY)
            data = found.get(key)
            if isinstance(data, str) or (data is not None and item in data):
                continue
            kind = DKIM_ALGORITHMS.get(str(dkim.get("algorithm") or "rsa-sha256"))
            if kind is None:
                continue  # the status says why
            private = dkim_keys.generate(kind).decode()
            try:
                await self.secrets.add_key(key[0], key[1], item, private)
            except SecretError as exc:
                found[key] = str(exc)
                continue
            found[key] = {**(data or {}), item: private}
            log.info("%s: generated a %s DKIM key into Secret %s/%s key %s", res, kind, *key, item)

    async def _read_secrets(self, resources: Iterable[Resource]) -> dict[SecretKey, SecretData]:
        """The Secrets that Transports name in spec.authSecretRef and
        MailDomains in spec.dkim.secretRef."""
        wanted = {key for res in resources if (key := _secret_ref(res)) is not None}
        found: dict[SecretKey, SecretData] = {}
        for namespace, name in sorted(wanted):
            if self.secrets is None:
                found[namespace, name] = "the operator has no Kubernetes API client"
                continue
            try:
                found[namespace, name] = await self.secrets.read(namespace, name)
            except SecretError as exc:
                found[namespace, name] = str(exc)
        return found

    # -- status -----------------------------------------------------------------
    def desired_status(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The status to write, or None when the current one is right (or unknown yet)."""
        meta = body.get("metadata") or {}
        key: ResourceKey = (kind, meta.get("namespace") or "", meta.get("name") or "")
        if self.compiled is None or key not in self.compiled.outcomes:
            return None
        generation = meta.get("generation")
        if self._generations.get(key) != generation:
            return None  # a newer spec is on its way through a handler
        outcome: Outcome = self.compiled.outcomes[key]
        message = outcome.error if outcome.error is not None else "; ".join(outcome.notes)
        message = message or MESSAGE_OK
        status = "True" if outcome.ok else "False"
        current = body.get("status") or {}
        cond = _ready_condition(current)
        if (
            cond.get("status") == status
            and cond.get("message") == message
            and current.get("message") == message
            and current.get("dkim") == outcome.dkim
            and current.get("observedGeneration") == generation
            # a wiped KV restarts numbering: never point past the version in force
            and 0 < (current.get("snapshotVersion") or 0) <= self.version
        ):
            return None
        transition = cond.get("lastTransitionTime") if cond.get("status") == status else None
        return {
            "conditions": [
                {
                    "type": READY,
                    "status": status,
                    "reason": REASON_PUBLISHED if outcome.ok else REASON_INVALID,
                    "message": message,
                    "lastTransitionTime": transition or _now(),
                    "observedGeneration": generation,
                }
            ],
            "snapshotVersion": self.version,
            "observedGeneration": generation,
            "message": message,
            "dkim": outcome.dkim,
        }

    def update_status(self, kind: str, body: kopf.Body, patch: kopf.Patch) -> None:
        desired = self.desired_status(kind, body)
        if desired is None:
            return
        for name, value in desired.items():
            patch.status[name] = value
        if desired["conditions"][0]["status"] == "True":
            kopf.info(
                body,
                reason=REASON_PUBLISHED,
                message=f"routing snapshot version {self.version}: {desired['message']}",
            )
        else:
            kopf.warn(body, reason=REASON_INVALID, message=desired["message"])

    # -- kopf wiring --------------------------------------------------------------
    def register(self, registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
        for plural, kind in PLURALS.items():
            self._register_kind(registry, plural, kind)
        objects_log = logging.getLogger("kopf.objects")
        if not any(isinstance(f, _QuietStatusTimer) for f in objects_log.filters):
            objects_log.addFilter(_QuietStatusTimer())
        return registry

    def _register_kind(self, registry: kopf.OperatorRegistry, plural: str, kind: str) -> None:
        def index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], Entry]:
            entry = entry_from_body(kind, body)
            return {(entry.resource.namespace, entry.resource.name): entry}

        async def changed(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            await self.reconcile(kwargs[i] for i in INDEX_IDS.values())
            self.update_status(kind, body, patch)

        async def deleted(**kwargs: Any) -> None:
            await self.reconcile(kwargs[i] for i in INDEX_IDS.values())

        async def status(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
            spec = body.get("spec") or {}
            if spec.get("authSecretRef") or spec.get("dkim"):
                # Its Secret may have changed (a rotated password or key): compile again.
                await self.reconcile(kwargs[i] for i in INDEX_IDS.values())
            self.update_status(kind, body, patch)

        common: dict[str, Any] = {"registry": registry, "backoff": self.retry_delay}
        kopf.index(GROUP, VERSION, plural, id=INDEX_IDS[plural], registry=registry)(index)
        kopf.on.resume(GROUP, VERSION, plural, id="routing", **common)(changed)
        kopf.on.create(GROUP, VERSION, plural, id="routing", **common)(changed)
        kopf.on.update(GROUP, VERSION, plural, id="routing", **common)(changed)
        kopf.on.delete(GROUP, VERSION, plural, id="routing", **common)(deleted)
        kopf.timer(GROUP, VERSION, plural, id="status", interval=self.status_interval, **common)(
            status
        )


class _QuietStatusTimer(logging.Filter):
    """Drop kopf's per-run lines of the status timer (one per resource every
    status_interval); its failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno <= logging.INFO and record.getMessage().startswith("Timer 'status'")
        )


def _secret_ref(res: Resource) -> SecretKey | None:
    if res.kind == TRANSPORT:
        ref = res.spec.get("authSecretRef")
    else:
        dkim = res.spec.get("dkim")
        ref = dkim.get("secretRef") if isinstance(dkim, Mapping) else None
    if isinstance(ref, Mapping) and isinstance(ref.get("name"), str) and ref["name"]:
        return (res.namespace, ref["name"])
    return None


def _content(snapshot: RoutingSnapshot) -> dict[str, Any]:
    return snapshot.model_dump(exclude={"version"})


def kopf_settings(finalizer: str = "postfleet.io/routing") -> kopf.OperatorSettings:
    """kopf's own settings: our finalizer name, progress kept in annotations
    (the status belongs to the resource's Ready condition)."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = finalizer
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="operator.postfleet.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="operator.postfleet.io", key="last-handled-configuration"
    )
    return settings
