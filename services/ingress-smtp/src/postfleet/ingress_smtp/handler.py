"""ingress-smtp: the aiosmtpd handler -- smtpd's policy and its hand-off to cleanup.

RCPT: smtpd_recipient_limit, then the restriction lists (``smtpd_check.py``:
client, HELO and sender lists too with smtpd_delay_reject, then relay and
recipient lists and reject_unlisted_recipient) on the routing snapshot in
force at that moment (it changes live, DESIGN invariant 6). The protocol asks
the handler for the other stages: connect, HELO and MAIL (without
smtpd_delay_reject), DATA, and end-of-data before the message goes out.
DATA: the message goes to cleanup; the client hears ``250 2.0.0 Ok: queued
as ID`` only once cleanup has committed it, and ``451 4.3.0`` (or cleanup's
own refusal) otherwise -- never a 250 on failure (invariant 1).

Postfix parameters: smtpd_recipient_limit, smtpd_delay_reject (the
restriction lists themselves: smtpd_check.py), smtpd_forbid_bare_newline_exclusions,
mynetworks, smtpd_client_event_limit_exceptions, smtpd_tls_received_header,
smtpd_sasl_authenticated_header, content_filter and receive_override_options
(no_unknown_recipient_checks in smtpd_check.py; the rest travel to cleanup
with the message); postfleet's content_filter_domains.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData

from postfleet.core.maillog import maillog
from postfleet.core.queueid import new_queue_id
from postfleet.core.routing.store import RoutingView
from postfleet.core.routing.tables import domain_list
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply
from postfleet.ingress_smtp.grammar import reply_line
from postfleet.ingress_smtp.metrics import ACCEPTED, POSTFIX_PROCESSED, POSTFIX_REJECTED
from postfleet.ingress_smtp.restrictions import client_listed
from postfleet.ingress_smtp.session import IngressSession
from postfleet.ingress_smtp.settings import SmtpdParams
from postfleet.ingress_smtp.smtpd_check import Checks, Facts
from postfleet.ingress_smtp.submit import CleanupClient, ClientInfo, SubmitFailed
from postfleet.ingress_smtp.tls import tls_received_comments

log = logging.getLogger(__name__)


class IngressHandler:
    """One per listener (its parameters may differ, like master.cf -o)."""

    def __init__(
        self, *, listener: str, params: SmtpdParams, routing: RoutingView, cleanup: CleanupClient,
        checks: Checks,
    ) -> None:
        self.listener = listener
        self.params = params
        self.routing = routing
        self.cleanup = cleanup
        self.checks = checks
        self.filter_domains = domain_list(params.content_filter_domains, (),
                                          parent_style=False)

    # -- restriction stages -------------------------------------------------------------
    async def facts(self, session: IngressSession, sender: str | None = None,
                    recipient: str | None = None) -> Facts:
        return Facts(session.client_ip, await session.resolved_name(), session.helo, sender,
                     recipient, session.sasl_username, session.pipelined)

    async def check_connect(self, session: IngressSession) -> SmtpReply | None:
        """smtpd_client_restrictions when smtpd_delay_reject = no."""
        if self.checks.delay_reject:
            return None
        return self._logged(await self.checks.client(await self.facts(session)), "CONNECT",
                            session)

    async def check_helo(self, session: IngressSession, helo: str) -> SmtpReply | None:
        if self.checks.delay_reject:
            return None
        facts = await self.facts(session)
        facts.helo = helo
        return self._logged(await self.checks.helo(facts), "HELO", session)

    async def check_data(self, session: IngressSession, envelope: Any) -> SmtpReply | None:
        facts = await self.facts(session, envelope.mail_from,
                                 envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        return self._logged(await self.checks.data(facts, len(envelope.rcpt_tos)), "DATA",
                            session, envelope)

    def _logged(self, refusal: SmtpReply | None, where: str, session: IngressSession,
                envelope: Any = None, recipient: str = "") -> SmtpReply | None:
        """Postfix's "NOQUEUE: reject: RCPT from name[ip]: 554 ...; from=<> to=<>" line."""
        if refusal is not None:
            sender = "" if envelope is None else f" from=<{envelope.mail_from}>"
            to = f" to=<{recipient}>" if recipient else ""
            maillog("smtpd", "NOQUEUE",
                    f"reject: {where} from {session.describe()}: {reply_line(refusal)};"
                    f"{sender}{to} proto={session.protocol} helo=<{session.helo}>")
            POSTFIX_REJECTED.labels(str(refusal.code)).inc()
        return refusal

    def bare_newline_exempt(self, ip: str) -> bool:
        return client_listed(
            self.routing.snapshot, self.params.smtpd_forbid_bare_newline_exclusions, ip
        )

    def limits_exempt(self, ip: str) -> bool:
        """smtpd_client_event_limit_exceptions: clients anvil never counts."""
        return client_listed(
            self.routing.snapshot, self.params.smtpd_client_event_limit_exceptions, ip
        )

    async def handle_MAIL(
        self, server: Any, session: IngressSession, envelope: Any, address: str,
        options: list[str],
    ) -> str:
        if not self.checks.delay_reject:
            refusal = await self.checks.sender(await self.facts(session, address))
            if refusal is not None:
                envelope.mail_from = address
                self._logged(refusal, "MAIL", session, envelope)
                envelope.mail_from = None
                return reply_line(refusal)
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
        refusal = await self.checks.recipient(
            await self.facts(session, envelope.mail_from, address))
        if refusal is not None:
            self._logged(refusal, "RCPT", session, envelope, address)
            return reply_line(refusal)
        envelope.rcpt_tos.append(address)
        return reply_line(replies.RCPT_OK)

    async def handle_DATA(self, server: Any, session: IngressSession, envelope: Any) -> str:
        facts = await self.facts(session, envelope.mail_from,
                                 envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        refusal = self._logged(await self.checks.end_of_data(facts, len(envelope.rcpt_tos)),
                               "END-OF-MESSAGE", session, envelope)
        if refusal is not None:
            return reply_line(refusal)
        trace_id = uuid.uuid4().hex
        name = await session.resolved_name()
        # Postfix's smtpd logs client= as the queue file is opened, before
        # qmgr can see it (log readers pair that line with qmgr's from=).
        queue_id = new_queue_id()
        sasl = (f", sasl_method={session.sasl_method}, sasl_username={session.sasl_username}"
                if session.sasl_username else "")
        maillog("smtpd", queue_id, f"client={session.describe()}{sasl}")
        try:
            queue_id = await self.cleanup.submit(
                queue_id=queue_id,
                sender=envelope.mail_from,
                recipients=list(envelope.rcpt_tos),
                client=ClientInfo(name, session.client_ip, session.client_port, session.helo,
                                  session.protocol, session.sasl_username,
                                  tuple(self._received_comments(session))),
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
        POSTFIX_PROCESSED.labels(session.sasl_method if session.sasl_username else "").inc()
        ACCEPTED.labels(self.listener).inc()
        log.info("queued %d bytes for %d recipients", len(envelope.original_content),
                 len(envelope.rcpt_tos), extra={"queue_id": queue_id, "trace_id": trace_id})
        return reply_line(replies.queued_as(queue_id))

    def _received_comments(self, session: IngressSession) -> list[str]:
        """smtpd_tls_received_header, smtpd_sasl_authenticated_header."""
        comments: list[str] = []
        if self.params.smtpd_tls_received_header and session.ssl is not None:
            comments += tls_received_comments(session.ssl)
        if self.params.smtpd_sasl_authenticated_header and session.sasl_username:
            comments.append(f"(Authenticated sender: {session.sasl_username})")
        return comments

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
