"""Kubernetes Secrets for the smtp client's SASL: reading the Secrets that
Transport resources name (spec.authSecretRef), and writing the one Secret
that holds the compiled smtp_sasl_password_maps table for the delivery role.

Why a Secret and not the routing snapshot: the snapshot lives in NATS KV,
which every role (and anyone with access to the bus) reads; a password there
would be in clear text outside Kubernetes' control. So the operator writes
one Secret (``<release>-sasl-passwords``, key ``sasl_passwd``, Postfix's
``next-hop username:password`` lines) in its own namespace; the chart mounts
it into the delivery pods (smtp_sasl_password_maps =
texthash:/etc/postfleet/sasl/sasl_passwd), and the smtp client rereads the
file when the kubelet updates it. Passwords thus stay in Secrets (RBAC,
encryption at rest) end to end.

The client is kubernetes_asyncio's (the operator's own kopf has no public
API client): ``get`` on the referenced Secrets, ``get``/``create``/``patch``
on the table's Secret.

DKIM keys, the same way: the operator reads the Secret a MailDomain names
in spec.dkim.secretRef (or generates a key into it when spec.dkim.generate
asks and there is none), and writes every signing key into one Secret of its
own, ``<release>-dkim-keys``, one key per DKIM key named
``<selector>._domainkey.<domain>``, which the chart mounts into the cleanup
pods as dkim_key_directory. Private keys never travel over NATS.

Postfix parameters: smtp_sasl_password_maps (the table written); postfleet's
dkim_key_directory (the DKIM keys' Secret).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

TABLE_KEY = "sasl_passwd"


class SecretError(Exception):
    """A Secret that cannot be read or written (other than not found)."""


class SecretStore(Protocol):
    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, decoded; None when there is no such Secret."""
        ...

    async def write_passwords(self, entries: Mapping[str, str]) -> None:
        """Store the smtp_sasl_password_maps table (next hop -> user:password)."""
        ...

    async def write_dkim_keys(self, entries: Mapping[str, str]) -> None:
        """Store the signing keys (<selector>._domainkey.<domain> -> key)."""
        ...

    async def add_key(self, namespace: str, name: str, item: str, value: str) -> None:
        """Put one key into a Secret, creating the Secret when there is none."""
        ...


def password_table(entries: Mapping[str, str]) -> str:
    """The table as postmap source text, one ``key value`` line each."""
    return "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))


class KubernetesSecrets:
    """SecretStore on the Kubernetes API."""

    def __init__(self, api: k8s.ApiClient, namespace: str, name: str,
                 dkim_name: str = "postfleet-dkim-keys") -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.name = name
        self.dkim_name = dkim_name

    async def read(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret: Any = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise SecretError(f"{exc.status} {exc.reason}") from None
        data: dict[str, str] = secret.data or {}
        return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}

    async def write_passwords(self, entries: Mapping[str, str]) -> None:
        await self._write(self.namespace, self.name,
                          {TABLE_KEY: password_table(entries)}, replace=True)

    async def write_dkim_keys(self, entries: Mapping[str, str]) -> None:
        await self._write(self.namespace, self.dkim_name, dict(entries), replace=True)

    async def add_key(self, namespace: str, name: str, item: str, value: str) -> None:
        await self._write(namespace, name, {item: value}, replace=False)

    async def _write(self, namespace: str, name: str, data: Mapping[str, str], *,
                     replace: bool) -> None:
        """Create the Secret, or patch its data: ``replace`` makes the data
        exactly ``data`` (keys no longer wanted go), else keys are added."""
        encoded: dict[str, str | None] = {
            k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        labels = {"app.kubernetes.io/part-of": "postfleet",
                  "app.kubernetes.io/managed-by": "postfleet-operator"}
        try:
            if replace:
                current = await self.read(namespace, name)
                for gone in set(current or {}) - set(data):
                    encoded[gone] = None  # a merge patch deletes a key set to null
            body = k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(name=name, namespace=namespace,
                                          labels=labels if replace else None),
                type="Opaque", data=encoded)  # type: ignore[arg-type]  # null deletes
            try:
                # A JSON merge patch (RFC 7386): the generated stubs leave out
                # the client's _content_type keyword, which chooses it.
                await self.core.patch_namespaced_secret(  # type: ignore[call-arg]
                    name, namespace, body, _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                body.data = {k: v for k, v in encoded.items() if v is not None}
                await self.core.create_namespaced_secret(namespace, body)
        except (ApiException, SecretError) as exc:
            why = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else str(exc)
            raise SecretError(f"writing Secret {namespace}/{name}: {why}") from None


async def api_client() -> k8s.ApiClient | None:
    """An API client as kopf logs in: the pod's service account, else
    $KUBECONFIG or ~/.kube/config; None when there is neither."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except ConfigException:
        try:
            await k8s_config.load_kube_config(client_configuration=configuration)
        except (ConfigException, OSError):
            return None
    return k8s.ApiClient(configuration)
