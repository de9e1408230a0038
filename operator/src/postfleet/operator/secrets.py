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

Postfix parameters: smtp_sasl_password_maps (the table written).
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


def password_table(entries: Mapping[str, str]) -> str:
    """The table as postmap source text, one ``key value`` line each."""
    return "".join(f"{key} {value}\n" for key, value in sorted(entries.items()))


class KubernetesSecrets:
    """SecretStore on the Kubernetes API."""

    def __init__(self, api: k8s.ApiClient, namespace: str, name: str) -> None:
        self.core = k8s.CoreV1Api(api)
        self.namespace = namespace
        self.name = name

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
        encoded = base64.b64encode(password_table(entries).encode()).decode()
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=self.name, namespace=self.namespace,
                labels={"app.kubernetes.io/part-of": "postfleet",
                        "app.kubernetes.io/managed-by": "postfleet-operator"}),
            type="Opaque", data={TABLE_KEY: encoded})
        try:
            try:
                # A JSON merge patch (RFC 7386): the generated stubs leave out
                # the client's _content_type keyword, which chooses it.
                await self.core.patch_namespaced_secret(  # type: ignore[call-arg]
                    self.name, self.namespace, body,
                    _content_type="application/merge-patch+json")
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            raise SecretError(
                f"writing Secret {self.namespace}/{self.name}: {exc.status} {exc.reason}"
            ) from None


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
