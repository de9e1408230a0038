"""Wiring for ``python -m postfleet.operator``: connect to NATS, build the kopf
registry, run kopf (standalone by default: one replica, no peering) next to the role's
/healthz, /readyz and /metrics.

Postfix parameters read: myhostname and the ``routing:`` block (the base
tables the resources add to).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

import kopf

from postfleet.core.bus.connect import connect, routing_bucket
from postfleet.core.logs import setup_logging
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.service import Service
from postfleet.operator.handlers import RoutingOperator, kopf_settings
from postfleet.operator.secrets import KubernetesSecrets, api_client
from postfleet.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

LoginFn = Callable[..., kopf.ConnectionInfo | None]


def cluster_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


async def serve(settings: OperatorSettings, login: LoginFn = cluster_login) -> None:
    """Run until SIGTERM/SIGINT."""
    nc = await connect(settings.nats_url, "postfleet-operator")
    stack = contextlib.AsyncExitStack()
    try:
        js = nc.jetstream()
        await routing_bucket(js)
        base = RoutingSnapshot.from_config(settings.routing, myhostname=settings.myhostname)
        api = await api_client()
        secrets: KubernetesSecrets | None = None
        if api is None:
            log.warning("no Kubernetes API client: Transports with authSecretRef stay not "
                        "Ready, MailDomains with dkim do not sign")
        else:
            stack.push_async_callback(api.close)
            secrets = KubernetesSecrets(api, settings.sasl_secret_home, settings.sasl_secret_name,
                                        settings.dkim_secret_name)
        operator = RoutingOperator(
            js, base, status_interval=settings.status_interval, retry_delay=settings.retry_delay,
            secrets=secrets,
        )
        registry = operator.register(kopf.OperatorRegistry())
        kopf.on.login(registry=registry)(login)
        kopf_ready = asyncio.Event()
        async with Service("operator", settings) as svc:
            svc.add_check("nats", lambda: nc.is_connected)
            svc.add_check("kopf", kopf_ready.is_set)
            svc.set_ready(True)
            namespaces = settings.namespaces
            others = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
            tasks = await kopf.spawn_tasks(
                registry=registry,
                settings=kopf_settings(settings.finalizer),
                standalone=settings.operator_standalone,
                clusterwide=not namespaces,
                namespaces=namespaces,
                stop_flag=svc.stopping,
                ready_flag=kopf_ready,
            )
            # kopf took SIGTERM/SIGINT for itself: hand them back to the Service, whose
            # stop flag kopf watches (and /readyz turns false while draining).
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, svc.request_stop)
            # kopf ends cancelled when asked to stop: that is our exit.
            with contextlib.suppress(asyncio.CancelledError):
                await kopf.run_tasks(tasks, ignored=others)
    finally:
        await stack.aclose()
        await nc.close()


def main() -> None:
    """Run the operator (its command line is read by ``__main__`` first)."""
    settings = OperatorSettings()
    setup_logging("operator", settings.log_format, settings.log_level)
    asyncio.run(serve(settings))
