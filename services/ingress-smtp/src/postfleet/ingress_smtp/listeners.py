"""ingress-smtp listeners: one asyncio server per configured smtpd service
(the master.cf lines), and the SIGTERM drain.

Drain: the servers stop accepting, idle sessions get ``421 4.3.2 ... Service
shutting down`` now, sessions inside a transaction may finish it (their
message is queued and answered) and are closed at their next command; what
is left after ``drain_timeout`` is closed with the same 421. A client that
hears 421 retries elsewhere, so nothing acknowledged is lost and nothing
unacknowledged is kept.

SASL: listeners with smtpd_sasl_auth_enable share one backend per
smtpd_sasl_type, smtpd_sasl_path and smtpd_sasl_service. anvil: one
FleetAnvil (NATS KV) for all listeners, or None (no limits, as Postfix's
smtpd without anvil) when the caller has no bus.

TLS: each listener whose smtpd_tls_security_level is not none (or that is
in wrapper mode) gets its certificate loaded at start -- a missing or broken
one stops the role -- and listeners with the same certificate and protocol
range share one ``ServerTls`` (one reload check).

Postfix parameters: the per-listener overrides of every smtpd parameter;
smtpd_tls_cert_file, smtpd_tls_key_file, smtpd_tls_protocols,
smtpd_tls_mandatory_protocols, smtpd_sasl_auth_enable, smtpd_sasl_type,
smtpd_sasl_path, smtpd_sasl_service. postfleet's own: dns_nameservers (the
resolver of smtpd_peername_lookup, one for every listener),
ingress_reuse_port (several processes on the same ports).

ETRN: ``flush_site`` (from main: a request to qmgr on the bus) is every
session's way to the flush service; without one ETRN answers 458.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from postfleet.core.nameservers import blocking_dns_client, dns_client
from postfleet.core.routing.store import RoutingView
from postfleet.core.smtp import replies
from postfleet.ingress_smtp.anvil import FleetAnvil
from postfleet.ingress_smtp.handler import IngressHandler
from postfleet.ingress_smtp.peername import client_name_lookup
from postfleet.ingress_smtp.protocol import FlushSite, IngressSMTP, Sessions
from postfleet.ingress_smtp.sasl import SaslBackend, sasl_backend
from postfleet.ingress_smtp.settings import IngressSettings, Listener, SmtpdParams
from postfleet.ingress_smtp.smtpd_check import DNS_TIMEOUT, Checks
from postfleet.ingress_smtp.submit import CleanupClient
from postfleet.ingress_smtp.tls import ServerTls

log = logging.getLogger(__name__)

AUTH_DNS_TIMEOUT = 10.0  # one SPF/DKIM/DMARC lookup, all retries included


class Listeners:
    def __init__(
        self, settings: IngressSettings, routing: RoutingView, cleanup: CleanupClient,
        anvil: FleetAnvil | None = None, flush_site: FlushSite | None = None,
    ) -> None:
        self.settings = settings
        self.anvil = anvil
        self.flush_site = flush_site
        self.routing = routing
        self.cleanup = cleanup
        self.sessions = Sessions()
        # smtpd_peername_lookup's resolver: the system's, or dns_nameservers.
        self.name_lookup = client_name_lookup(settings.dns_nameservers)
        # The restrictions' DNS (DNS lists, unknown domains): dns_nameservers, or
        # None for the system's resolver.
        self.resolver = (dns_client(settings.dns_nameservers, DNS_TIMEOUT)
                         if settings.dns_nameservers else None)
        # Mail authentication's (blocking: pyspf and dkimpy run in a thread),
        # when a listener checks.
        checking = any(settings.params_for(listener).smtpd_authentication_checks
                       for listener in settings.listeners)
        self.auth_resolver = (blocking_dns_client(settings.dns_nameservers, AUTH_DNS_TIMEOUT)
                              if checking else None)
        self.ports: dict[str, int] = {}
        self._servers: list[asyncio.Server] = []
        self._tls: dict[tuple[str, str, str], ServerTls] = {}
        self._sasl: dict[tuple[str, str, str], SaslBackend] = {}

    async def start(self) -> None:
        try:
            for listener in self.settings.listeners:
                await self._start_one(listener)
        except BaseException:
            await self.drain(0)
            raise

    async def _start_one(self, listener: Listener) -> None:
        loop = asyncio.get_running_loop()
        params = self.settings.params_for(listener)
        handler = IngressHandler(
            listener=listener.name, params=params, routing=self.routing, cleanup=self.cleanup,
            checks=Checks(params, self.routing, self.resolver),
            myhostname=self.settings.myhostname, resolver=self.auth_resolver,
        )
        myhostname = self.settings.myhostname
        tls = self._server_tls(params)
        sasl = self._sasl_backend(params)

        def session() -> IngressSMTP:
            return IngressSMTP(
                handler, params=params, myhostname=myhostname, listener=listener.name,
                sessions=self.sessions, bare_newline_exempt=handler.bare_newline_exempt,
                tls=tls, name_lookup=self.name_lookup, sasl=sasl, anvil=self.anvil,
                limits_exempt=handler.limits_exempt, flush_site=self.flush_site, loop=loop,
            )

        server = await loop.create_server(
            session, host=listener.address, port=listener.port, reuse_address=True,
            reuse_port=self.settings.ingress_reuse_port or None,
        )
        self._servers.append(server)
        self.ports[listener.name] = int(server.sockets[0].getsockname()[1])
        log.info("smtpd %s listening on %s:%d (TLS %s%s%s)", listener.name, listener.address,
                 self.ports[listener.name], params.tls_level(),
                 ", wrapper mode" if params.smtpd_tls_wrappermode else "",
                 ", PROXY protocol" if params.proxy_timeout() is not None else "")
        if params.tls_level() == "none" and params.smtpd_tls_cert_file:
            log.info("smtpd %s: smtpd_tls_cert_file is set but smtpd_tls_security_level is "
                     "empty (none): STARTTLS is not offered", listener.name)

    def _server_tls(self, params: SmtpdParams) -> ServerTls | None:
        if params.tls_level() == "none":
            return None
        key = (params.smtpd_tls_cert_file, params.tls_key_path(), params.tls_protocols())
        if key not in self._tls:
            self._tls[key] = ServerTls(*key)
        return self._tls[key]

    def _sasl_backend(self, params: SmtpdParams) -> SaslBackend | None:
        """smtpd_sasl_type/path/service: one backend per distinct triple."""
        if not params.smtpd_sasl_auth_enable:
            return None
        key = (params.smtpd_sasl_type, params.smtpd_sasl_path, params.smtpd_sasl_service)
        if key not in self._sasl:
            self._sasl[key] = sasl_backend(*key)
        return self._sasl[key]

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let sessions finish up to ``timeout``, close the rest."""
        for server in self._servers:
            server.close()
        for live in self.sessions:
            live.begin_drain()
        if len(self.sessions):
            log.info("draining %d SMTP sessions (up to %.0fs)", len(self.sessions), timeout)
            try:
                await asyncio.wait_for(self.sessions.empty.wait(), timeout)
            except TimeoutError:
                log.warning("closing %d SMTP sessions at the drain deadline",
                            len(self.sessions))
                for live in self.sessions:
                    live.hang_up(replies.SHUTTING_DOWN)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.sessions.empty.wait(), 2)
        for server in self._servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2)
        self._servers.clear()
