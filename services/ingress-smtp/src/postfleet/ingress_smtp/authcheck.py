"""ingress-smtp: inbound mail authentication, as a Postfix site gets it from
postfix-policyd-spf-python and OpenDKIM/OpenDMARC milters -- built in.

For clients neither in mynetworks nor SASL-authenticated (their mail is
signed, not checked): SPF at the first RCPT (a ``fail`` answers ``550
5.7.23 <rcpt>: Recipient address rejected: Message rejected due to: SPF
fail - not authorized`` with smtpd_spf_reject_fail, else it is only
recorded), then at end of DATA DKIM, the incoming ARC chain and DMARC
(postfleet.core.mailauth.inbound). The message gets ``Received-SPF`` and one
``Authentication-Results: <myhostname>; spf=...; dkim=...; dmarc=...;
arc=...``; Authentication-Results fields that already claim myhostname are
removed first. With smtpd_dmarc_reject_failures (OpenDMARC's
RejectFailures) a DMARC failure under p=reject answers ``550 5.7.1 rejected
by DMARC policy for DOMAIN`` at end of DATA and one under p=quarantine goes
to the hold queue; pct= sampling applies.

DNS: dns_nameservers (the system's resolver when empty), blocking lookups
in a worker thread (pyspf and dkimpy ask synchronously).

Postfix parameters: myhostname, mynetworks (through the handler's trust
test); postfleet's own: smtpd_authentication_checks, smtpd_spf_reject_fail,
smtpd_dmarc_reject_failures, dns_nameservers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from postfleet.core.mailauth import fields, inbound
from postfleet.core.mailauth.lookup import Resolver
from postfleet.core.maillog import maillog_event
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply, about, recipient_rejected
from postfleet.ingress_smtp.session import IngressSession
from postfleet.ingress_smtp.settings import SmtpdParams

log = logging.getLogger(__name__)


class Checked:
    """What end of DATA decided: the message to queue, a refusal, hold."""

    def __init__(self, body: bytes, refusal: SmtpReply | None = None, hold: bool = False,
                 hold_reason: str = "") -> None:
        self.body = body
        self.refusal = refusal
        self.hold = hold
        self.hold_reason = hold_reason


class MailAuthentication:
    """The checks of one listener."""

    def __init__(self, params: SmtpdParams, myhostname: str, resolver: Resolver) -> None:
        self.params = params
        self.myhostname = myhostname
        self.resolver = resolver

    @property
    def enabled(self) -> bool:
        return self.params.smtpd_authentication_checks

    async def at_rcpt(self, session: IngressSession, envelope: Any,
                      recipient: str) -> SmtpReply | None:
        """SPF once per transaction; a refusal for this RCPT when it fails hard."""
        result = await self._spf(session, envelope)
        if result.result == "fail" and self.params.smtpd_spf_reject_fail:
            return recipient_rejected(replies.SPF_REJECTED, recipient)
        return None

    async def _spf(self, session: IngressSession, envelope: Any) -> inbound.SpfResult:
        result: inbound.SpfResult | None = getattr(envelope, "spf_result", None)
        if result is None:
            result = await asyncio.to_thread(
                inbound.check_spf, self.resolver, ip=session.client_ip,
                sender=envelope.mail_from or "", helo=session.helo, receiver=self.myhostname)
            envelope.spf_result = result
            maillog_event("policy-spf", f"{result.result}: {session.describe()} "
                          f"identity={result.identity} {result.domain}")
        return result

    async def at_end_of_data(self, session: IngressSession, envelope: Any,
                             body: bytes) -> Checked:
        spf_result = await self._spf(session, envelope)

        def verdicts() -> inbound.Verdicts:
            dkim_results = inbound.verify_dkim(self.resolver, body)
            dmarc_result = inbound.evaluate_dmarc(self.resolver, body, spf_result, dkim_results)
            return inbound.Verdicts(spf_result, dkim_results, dmarc_result,
                                    inbound.verify_arc(self.resolver, body))

        found = await asyncio.to_thread(verdicts)
        stamped = fields.prepend(
            inbound.strip_ours(body, self.myhostname),
            inbound.authentication_results(self.myhostname, found),
            f"Received-SPF: {spf_result.received_spf}".encode("utf-8", "replace"))
        dmarc = found.dmarc
        assert dmarc is not None
        if dmarc.domain:
            maillog_event("dmarc", f"{session.describe()}: {dmarc.domain} {dmarc.result} "
                          f"(p={dmarc.policy or 'none'}, disposition={dmarc.disposition})")
        if dmarc.result == "fail" and self.params.smtpd_dmarc_reject_failures:
            if dmarc.disposition == "reject":
                return Checked(stamped, about(replies.DMARC_REJECTED, dmarc.domain))
            if dmarc.disposition == "quarantine":
                return Checked(stamped, hold=True,
                               hold_reason=f"DMARC quarantine policy for {dmarc.domain}")
        return Checked(stamped)
