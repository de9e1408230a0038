"""The operator's settings: CommonSettings plus where to watch and how often
to re-check statuses.

The Helm chart sets POSTFLEET_OPERATOR_NAMESPACE (the pod's namespace),
POSTFLEET_OPERATOR_CLUSTERWIDE and POSTFLEET_OPERATOR_STANDALONE. The base
routing tables (myhostname, mynetworks, relayhost, the default mydestination,
...) come from the config file's ``routing:`` block, like the monolithic
launcher's; MailDomain and Transport resources add to them.

Postfix parameters read: myhostname, and the ``routing:`` block's tables;
written apart: smtp_sasl_password_maps (sasl_secret_name) and cleanup's
DKIM keys (dkim_secret_name).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from postfleet.core.settings import CommonSettings


class OperatorSettings(CommonSettings):
    config_section: ClassVar[str | None] = "operator"

    # Namespace(s) to watch, comma-separated; ignored when clusterwide.
    # Neither set: the whole cluster (a developer's kubeconfig).
    operator_namespace: str = ""
    operator_clusterwide: bool = False
    # kopf without peering: the chart runs exactly one replica (Recreate).
    operator_standalone: bool = True
    # How often each resource's status is re-checked against the latest
    # compilation (a resource's status can change because of another one).
    status_interval: float = 5.0
    # Delay before retrying a handler when NATS is unreachable.
    retry_delay: float = 5.0
    finalizer: str = "postfleet.io/routing"
    # The Secret the operator writes smtp_sasl_password_maps into (from
    # Transports' authSecretRef) and the chart mounts into delivery; its
    # namespace defaults to the first watched namespace, else "default".
    sasl_secret_name: str = "postfleet-sasl-passwords"
    sasl_secret_namespace: str = ""
    # The Secret the operator writes the DKIM signing keys into (from
    # MailDomains' spec.dkim), in the same namespace; the chart mounts it into
    # cleanup as dkim_key_directory.
    dkim_secret_name: str = "postfleet-dkim-keys"
    # The base tables: the config file's top-level ``routing:`` block.
    routing: dict[str, Any] = Field(default_factory=dict)

    @property
    def sasl_secret_home(self) -> str:
        return self.sasl_secret_namespace or next(iter(self.namespaces), "") or "default"

    @property
    def namespaces(self) -> list[str]:
        """The namespaces to watch; empty means cluster-wide."""
        if self.operator_clusterwide:
            return []
        return [ns.strip() for ns in self.operator_namespace.split(",") if ns.strip()]
