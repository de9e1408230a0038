"""ingress-smtp: the aiosmtpd handler -- smtpd's policy and its hand-off to cleanup.

RCPT: smtpd_recipient_limit, then the relay decision (``restrictions.py``)
on the routing snapshot in force at that moment (it changes live, DESIGN
invariant 6). DATA: the message goes to cleanup; the client hears ``250 2.0.0
Ok: queued as ID`` only once cleanup has committed it, and ``451 4.3.0`` (or
cleanup's own refusal) otherwise -- never a 250 on failure (invariant 1).

Postfix parameters: smtpd_recipient_limit, smtpd_relay_restrictions,
smtpd_recipient_restrictions, smtpd_forbid_bare_newline_exclusions, mynetworks,
content_filter and receive_override_options (no_unknown_recipient_checks
here; the rest travel to cleanup with the message); postfleet's
content_filter_domains.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData

from postfleet.core.maillog import maillog
from postfleet.core.routing.store import RoutingView
from postfleet.core.routing.tables import domain_list
from postfleet.core.smtp import replies
from postfleet.ingress_smtp.grammar import reply_line
from postfleet.ingress_smtp.metrics import ACCEPTED
from postfleet.ingress_smtp.restrictions import Client, bare_newline_excluded, check_recipient
from postfleet.ingress_smtp.session import IngressSession
from postfleet.ingress_smtp.settings import SmtpdParams
from postfleet.ingress_smtp.submit import CleanupClient, ClientInfo, SubmitFailed

log = logging.getLogger(__name__)


class IngressHandler:
    """One per listener (its parameters may differ, like master.cf -o)."""

    def __init__(
        self, *, listener: str, params: SmtpdParams, routing: RoutingView, cleanup: CleanupClient
    ) -> None:
        self.listener = listener
        self.params = params
        self.routing = routing
        self.cleanup = cleanup
        self.filter_domains = domain_list(params.content_filter_domains, (),
                                          parent_style=False)

    def bare_newline_exempt(self, ip: str) -> bool:
        return bare_newline_excluded(
            self.routing.snapshot, self.params.smtpd_forbid_bare_newline_exclusions, ip
        )

    async def handle_MAIL(
        self, server: Any, session: IngressSession, envelope: Any, address: str,
        options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return reply_line(replies.SENDER_OK)

    async def handle_RCPT(
        self, server: Any, session: IngressSession, envelope: Any, address: str,
        options: list[str],
    ) -> str:
        limit = self.params.smtpd_recipient_limit
        if limit and len(envelope.rcpt_tos) >= limit:
            session.rcpt_overshoot += 1
            return reply_line(replies.TOO_MANY_RECIPIENTS)
        refusal = check_recipient(
            self.routing.snapshot,
            Client(session.client_ip, session.sasl_username),
            address,
            relay_restrictions=self.params.smtpd_relay_restrictions,
            recipient_restrictions=self.params.smtpd_recipient_restrictions,
            reject_unlisted_recipient=(
                "no_unknown_recipient_checks" not in self.params.receive_override_options),
        )
        if refusal is not None:
            await session.resolved_name()
            maillog(
                "smtpd", "NOQUEUE",
                f"reject: RCPT from {session.describe()}: {reply_line(refusal)}; "
                f"from=<{envelope.mail_from}> to=<{address}> proto={session.protocol} "
                f"helo=<{session.helo}>",
            )
            return reply_line(refusal)
        envelope.rcpt_tos.append(address)
        return reply_line(replies.RCPT_OK)

    async def handle_DATA(self, server: Any, session: IngressSession, envelope: Any) -> str:
        trace_id = uuid.uuid4().hex
        name = await session.resolved_name()
        try:
            queue_id = await self.cleanup.submit(
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                client=ClientInfo(name, session.client_ip, session.client_port, session.helo,
                                  session.protocol),
                body=envelope.original_content,
                trace_id=trace_id,
                body_type=_body_type(envelope.mail_options),
                content_filter=self.content_filter(envelope.rcpt_tos),
                overrides=self.params.receive_override_options,
            )
        except SubmitFailed as exc:
            log.warning("message from %s not queued: %s", session.describe(), exc,
                        extra={"trace_id": trace_id})
            return reply_line(exc.reply)
        maillog("smtpd", queue_id, f"client={session.describe()}")
        ACCEPTED.labels(self.listener).inc()
        log.info("queued %d bytes for %d recipients", len(envelope.original_content),
                 len(envelope.rcpt_tos), extra={"queue_id": queue_id, "trace_id": trace_id})
        return reply_line(replies.queued_as(queue_id))

    def content_filter(self, recipients: list[str]) -> str:
        """content_filter, unless content_filter_domains names none of the
        recipients' domains."""
        if not self.params.content_filter_domains:
            return self.params.content_filter
        domains = (r.rpartition("@")[2] for r in recipients)
        return self.params.content_filter if any(map(self.filter_domains.match, domains)) else ""

    async def handle_PROXY(
        self, server: Any, session: IngressSession, envelope: Any, proxy: ProxyData
    ) -> bool:
        """smtpd_upstream_proxy_protocol: the client is the one the PROXY header names."""
        if not session.take_proxy(proxy):
            return False
        session.start_name_lookup(self.params.smtpd_peername_lookup)
        return True

    async def handle_exception(self, error: Exception) -> str:
        log.error("smtpd session error", exc_info=error)
        return reply_line(replies.CONFIG_ERROR)


def _body_type(options: list[str]) -> str:
    for option in options:
        key, _, value = option.partition("=")
        if key.upper() == "BODY":
            return value.upper()
    return ""
