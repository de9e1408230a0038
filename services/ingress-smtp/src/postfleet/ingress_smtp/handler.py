"""ingress-smtp: the aiosmtpd handler -- smtpd's policy and its hand-off to cleanup.

RCPT: smtpd_recipient_limit, then the restriction lists (``smtpd_check.py``:
client, HELO and sender lists too with smtpd_delay_reject, then relay and
recipient lists and reject_unlisted_recipient) on the routing snapshot in
force at that moment (it changes live, DESIGN invariant 6). The protocol asks
the handler for the other stages: connect, HELO and MAIL (without
smtpd_delay_reject), DATA, and end-of-data before the message goes out.
DATA (or BDAT LAST): the message goes to cleanup with its DSN parameters
(RET, ENVID, each recipient's NOTIFY and ORCPT) and, when the client asked
for SMTPUTF8, the UTF8SMTP protocol; the client hears ``250 2.0.0 Ok: queued
as ID`` (after BDAT: ``Ok: N bytes queued as ID``) only once cleanup has
committed it, and ``451 4.3.0`` (or cleanup's own refusal) otherwise --
never a 250 on failure (invariant 1).

Postfix parameters: smtpd_recipient_limit, smtpd_delay_reject (the
restriction lists themselves: smtpd_check.py), smtpd_forbid_bare_newline_exclusions,
mynetworks, smtpd_client_event_limit_exceptions, smtpd_tls_received_header,
smtpd_sasl_authenticated_header, content_filter and receive_override_options
(no_unknown_recipient_checks in smtpd_check.py; the rest travel to cleanup
with the message); postfleet's content_filter_domains.

Mail authentication (authcheck.py) and smtpd_milters (milters.py) hook in
here: SPF and the milters' RCPT after the restrictions accept a recipient,
the milters' CONNECT/HELO/MAIL/DATA before the restriction stages of those
commands, and at end of DATA the DKIM/DMARC checks, then the milters' view of
the message, before it goes to cleanup. Clients in mynetworks or
authenticated are trusted: their mail is not checked (it is signed, in
cleanup).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiosmtpd.proxy_protocol import ProxyData

from postfleet.core.mailauth.lookup import Resolver
from postfleet.core.maillog import maillog
from postfleet.core.notices import qualify
from postfleet.core.queueid import new_queue_id
from postfleet.core.routing.store import RoutingView
from postfleet.core.routing.tables import domain_list
from postfleet.core.smtp import replies
from postfleet.core.smtp.dsn import smtputf8_protocol
from postfleet.core.smtp.hooks import HookNames
from postfleet.core.smtp.replies import SmtpReply
from postfleet.ingress_smtp import transcript
from postfleet.ingress_smtp.authcheck import MailAuthentication
from postfleet.ingress_smtp.grammar import reply_line
from postfleet.ingress_smtp.metrics import ACCEPTED, POSTFIX_PROCESSED, POSTFIX_REJECTED
from postfleet.ingress_smtp.milters import SmtpdMilters
from postfleet.ingress_smtp.restrictions import client_listed
from postfleet.ingress_smtp.session import IngressEnvelope, IngressSession
from postfleet.ingress_smtp.settings import SmtpdParams
from postfleet.ingress_smtp.smtpd_check import Checks, Facts
from postfleet.ingress_smtp.submit import CleanupClient, ClientInfo, SubmitFailed
from postfleet.ingress_smtp.tls import tls_received_comments

log = logging.getLogger(__name__)


class IngressHandler(HookNames):
    """One per listener (its parameters may differ, like master.cf -o)."""

    def __init__(
        self, *, listener: str, params: SmtpdParams, routing: RoutingView, cleanup: CleanupClient,
        checks: Checks, myhostname: str = "localhost", resolver: Resolver | None = None,
    ) -> None:
        self.listener = listener
        self.params = params
        self.routing = routing
        self.cleanup = cleanup
        self.checks = checks
        self.milters = SmtpdMilters(params, myhostname)
        self.auth = (MailAuthentication(params, myhostname, resolver)
                     if resolver is not None and params.smtpd_authentication_checks else None)
        self.filter_domains = domain_list(params.content_filter_domains, (),
                                          parent_style=False)

    # -- restriction stages -------------------------------------------------------------
    async def facts(self, session: IngressSession, sender: str | None = None,
                    recipient: str | None = None) -> Facts:
        return Facts(session.client_ip, await session.resolved_name(), session.helo, sender,
                     recipient, session.sasl_username, session.pipelined)

    async def check_connect(self, session: IngressSession) -> SmtpReply | None:
        """smtpd_milters' CONNECT; smtpd_client_restrictions when smtpd_delay_reject = no."""
        refusal = await self.milters.connect(session)
        if refusal is not None or self.checks.delay_reject:
            return refusal
        return self._logged(await self.checks.client(await self.facts(session)), "CONNECT",
                            session)

    async def check_helo(self, session: IngressSession, helo: str) -> SmtpReply | None:
        refusal = await self.milters.helo(session, helo)
        if refusal is not None or self.checks.delay_reject:
            return refusal
        facts = await self.facts(session)
        facts.helo = helo
        return self._logged(await self.checks.helo(facts), "HELO", session)

    async def check_data(self, session: IngressSession, envelope: Any) -> SmtpReply | None:
        facts = await self.facts(session, envelope.mail_from,
                                 envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        refusal = self._logged(await self.checks.data(facts, len(envelope.rcpt_tos)), "DATA",
                               session, envelope)
        return refusal or await self.milters.data(session, envelope)

    def trusted(self, session: IngressSession) -> bool:
        """Authenticated or in mynetworks: mail we sign rather than check."""
        return bool(session.sasl_username) or client_listed(
            self.routing.snapshot, ["$mynetworks"], session.client_ip)

    async def session_closed(self, session: IngressSession) -> None:
        await self.milters.close(session)

    def _logged(self, refusal: SmtpReply | None, where: str, session: IngressSession,
                envelope: Any = None, recipient: str = "") -> SmtpReply | None:
        """Postfix's "NOQUEUE: reject: RCPT from name[ip]: 554 ...; from=<> to=<>" line."""
        if refusal is not None:
            session.transcript.next_class = transcript.restriction_class(refusal.status)
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
        refusal = await self.milters.mail(session, envelope, address, options)
        if refusal is not None:
            envelope.mail_from = None
            return reply_line(refusal)
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
        if refusal is None and self.auth is not None and not self.trusted(session):
            refusal = await self.auth.at_rcpt(session, envelope, address)
        if refusal is not None:
            self._logged(refusal, "RCPT", session, envelope, address)
            return reply_line(refusal)
        refusal = await self.milters.rcpt(session, envelope, address, options)
        if refusal is not None:
            return reply_line(refusal)
        envelope.rcpt_tos.append(address)
        return reply_line(replies.RCPT_OK)

    async def handle_DATA(
        self, server: Any, session: IngressSession, envelope: IngressEnvelope
    ) -> str:
        facts = await self.facts(session, envelope.mail_from,
                                 envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        refusal = self._logged(await self.checks.end_of_data(facts, len(envelope.rcpt_tos)),
                               "END-OF-MESSAGE", session, envelope)
        if refusal is not None:
            await self.milters.end_message(session)
            return reply_line(refusal)
        message = await self.end_of_data(session, envelope)
        if message.refusal is not None:
            await self.milters.end_message(session)
            self._logged(message.refusal, "END-OF-MESSAGE", session, envelope)
            return reply_line(message.refusal)
        if message.discard:
            maillog("smtpd", "NOQUEUE", f"milter-discard: END-OF-MESSAGE from "
                    f"{session.describe()}: milter triggers DISCARD action; "
                    f"from=<{envelope.mail_from}> proto={session.protocol}")
            return reply_line(replies.OK)
        trace_id = uuid.uuid4().hex
        name = await session.resolved_name()
        protocol = (smtputf8_protocol(session.ssl is not None, bool(session.sasl_username))
                    if envelope.smtp_utf8 else session.protocol)
        # Postfix's smtpd logs client= as the queue file is opened, before
        # qmgr can see it (log readers pair that line with qmgr's from=).
        queue_id = new_queue_id()
        sasl = (f", sasl_method={session.sasl_method}, sasl_username={session.sasl_username}"
                if session.sasl_username else "")
        maillog("smtpd", queue_id, f"client={session.describe()}{sasl}")
        try:
            queue_id = await self.cleanup.submit(
                queue_id=queue_id,
                sender=message.sender,
                recipients=message.recipients,
                dsn=_dsn_for(message.recipients, envelope),
                ret=envelope.ret, envid=envelope.envid,
                client=ClientInfo(name, session.client_ip, session.client_port, session.helo,
                                  protocol, session.sasl_username,
                                  tuple(self._received_comments(session))),
                body=message.body,
                trace_id=trace_id,
                body_type=_body_type(envelope.mail_options),
                content_filter=self.content_filter(envelope.rcpt_tos),
                overrides=self.params.receive_override_options,
                hold=message.hold,
            )
        except SubmitFailed as exc:
            log.warning("message from %s not queued: %s", session.describe(), exc,
                        extra={"trace_id": trace_id})
            return reply_line(exc.reply)
        POSTFIX_PROCESSED.labels(session.sasl_method if session.sasl_username else "").inc()
        ACCEPTED.labels(self.listener).inc()
        log.debug("queued %d bytes for %d recipients", len(message.body),
                  len(message.recipients), extra={"queue_id": queue_id, "trace_id": trace_id})
        return reply_line(replies.queued_as(
            queue_id, envelope.bdat_size if envelope.bdat else None))

    async def notify_postmaster(self, client: str, lines: list[str], reason: str,
                                classes: set[str]) -> None:
        """Mail a session transcript to the postmaster (transcript.py)."""
        origin = self.routing.snapshot.origin
        to = qualify(self.params.bounce_notice_recipient if "bounce" in classes
                     else self.params.error_notice_recipient, origin)
        try:
            queue_id = await self.cleanup.submit(
                sender=qualify(self.params.double_bounce_sender, origin), recipients=[to],
                client=ClientInfo("", "", 0, "", "local"),
                body=transcript.notice(lines, reason, client, to, origin),
                trace_id=uuid.uuid4().hex)
        except SubmitFailed as exc:
            log.warning("postmaster notify: %s", exc)
            return
        log.info("session transcript of %s sent to %s", client, to,
                 extra={"queue_id": queue_id})

    async def end_of_data(self, session: IngressSession, envelope: Any) -> EndOfData:
        """The message as the checks and the milters leave it."""
        out = EndOfData(envelope.mail_from or "", list(envelope.rcpt_tos),
                        envelope.original_content or b"")
        if self.auth is not None and not self.trusted(session):
            checked = await self.auth.at_end_of_data(session, envelope, out.body)
            out.body, out.refusal, out.hold = checked.body, checked.refusal, checked.hold
            if out.refusal is not None:
                return out
        outcome = await self.milters.message(session, envelope, out.body)
        if outcome is None:
            return out
        decision = outcome.decision
        out.refusal, out.discard = decision.reply, decision.discard
        out.hold = out.hold or decision.hold
        out.body = outcome.message()
        if outcome.sender is not None:
            out.sender = outcome.sender
        dropped = {r.lower() for r in outcome.del_recipients}
        out.recipients = [r for r in out.recipients if r.lower() not in dropped]
        out.recipients += [r for r in outcome.add_recipients if r not in out.recipients]
        if not out.recipients and out.refusal is None and not out.discard:
            out.discard = True  # the milters took every recipient away
        return out

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


@dataclass
class EndOfData:
    """What goes to cleanup after the checks and the milters."""

    sender: str
    recipients: list[str]
    body: bytes
    refusal: SmtpReply | None = None
    discard: bool = False
    hold: bool = False


def _dsn_for(recipients: list[str], envelope: Any) -> list[tuple[str, str]]:
    """Each recipient's DSN parameters as given at RCPT; a recipient a
    milter added has none."""
    given = dict(zip(envelope.rcpt_tos, envelope.dsn, strict=False))
    return [given.get(r, ("", "")) for r in recipients]


def _body_type(options: list[str]) -> str:
    for option in options:
        key, _, value = option.partition("=")
        if key.upper() == "BODY":
            return value.upper()
    return ""
