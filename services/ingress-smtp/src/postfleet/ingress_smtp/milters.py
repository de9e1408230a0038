"""ingress-smtp: smtpd_milters -- Postfix smtpd's side of the milter protocol
(postfleet.core.milter): each SMTP connection gets its own conversation with
every milter, from CONNECT to QUIT, and the milters' verdicts answer the
SMTP command they were about: a refusal at CONNECT answers instead of the
banner (and every later command), at HELO, MAIL, RCPT or DATA that command,
and at end of message the DATA. Their end-of-message edits (header fields,
body, sender, recipients) apply to the message before it goes to cleanup; a
quarantine queues it on hold, a discard answers 250 and drops it.

Macros, as Postfix names them, for the names the milter_*_macros lists (or
the milter) ask for: j, {daemon_name}, {daemon_addr}, v, _, {client_addr},
{client_name}, {client_port}, {tls_version}, {cipher}, {cipher_bits},
{auth_type}, {auth_authen}, {mail_addr}, {rcpt_addr}. Postfix's i (the
queue id) is not sent: cleanup assigns it only once the message is queued;
nor are {mail_host}/{mail_mailer}/{rcpt_host}/{rcpt_mailer},
{cert_subject}/{cert_issuer} (no client certificates) or {auth_author}.

The milters see the message as the client sent it, before cleanup's
Received: (Postfix's first header field); insert index 0 is its top.
receive_override_options = no_milters turns them off for a listener.

Postfix parameters: smtpd_milters, milter_* (postfleet.core.milter.settings),
receive_override_options (no_milters), myhostname.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from postfleet.core.milter import client as milter
from postfleet.core.smtp.replies import SmtpReply
from postfleet.ingress_smtp.session import IngressSession
from postfleet.ingress_smtp.settings import MAIL_NAME, SmtpdParams

log = logging.getLogger(__name__)


def _mail_version() -> str:
    try:
        return version("postfleet-core")
    except PackageNotFoundError:
        return "0"


class SmtpdMilters:
    """The milters of one listener; each session keeps its own conversations."""

    def __init__(self, params: SmtpdParams, myhostname: str) -> None:
        self.params = params
        self.myhostname = myhostname
        on = params.smtpd_milters and "no_milters" not in params.receive_override_options
        self.specs = params.milters(params.smtpd_milters) if on else []
        self.macro_lists = params.stage_macros()
        self.v = (params.milter_macro_v.replace("$mail_name", MAIL_NAME)
                  .replace("$mail_version", _mail_version()))
        self.daemon_name = params.milter_macro_daemon_name.replace("$myhostname", myhostname)

    def __bool__(self) -> bool:
        return bool(self.specs)

    def of(self, session: IngressSession) -> milter.Milters | None:
        return session.milters

    def macros(self, session: IngressSession, envelope: Any = None,
               recipient: str = "") -> dict[str, str]:
        tls = session.ssl or {}
        values = {
            "j": self.myhostname, "{daemon_name}": self.daemon_name,
            "{daemon_addr}": session.server_ip, "v": self.v,
            "_": f"{session.client_name} [{session.client_ip}]",
            "{client_addr}": session.client_ip, "{client_name}": session.client_name,
            "{client_port}": str(session.client_port),
            "{tls_version}": str(tls.get("protocol", "")), "{cipher}": str(tls.get("cipher", "")),
            "{cipher_bits}": str(tls.get("bits", "")) if tls else "",
            "{auth_type}": session.sasl_method, "{auth_authen}": session.sasl_username,
        }
        if envelope is not None and envelope.mail_from is not None:
            values["{mail_addr}"] = envelope.mail_from
        if recipient:
            values["{rcpt_addr}"] = recipient
        return values

    async def connect(self, session: IngressSession) -> SmtpReply | None:
        if not self.specs:
            return None
        milters = milter.Milters(self.specs, self.macro_lists)
        session.milters = milters
        name = await session.resolved_name()
        return _reply(await milters.connect(name, session.client_ip, session.client_port,
                                            self.macros(session)), "CONNECT", session)

    async def helo(self, session: IngressSession, helo: str) -> SmtpReply | None:
        milters = self.of(session)
        if milters is None:
            return None
        return _reply(await milters.helo(helo, self.macros(session)), "HELO", session)

    async def mail(self, session: IngressSession, envelope: Any, sender: str,
                   options: list[str]) -> SmtpReply | None:
        milters = self.of(session)
        if milters is None:
            return None
        return _reply(await milters.mail(sender, options, self.macros(session, envelope)),
                      "MAIL", session)

    async def rcpt(self, session: IngressSession, envelope: Any, recipient: str,
                   options: list[str]) -> SmtpReply | None:
        milters = self.of(session)
        if milters is None:
            return None
        decision = await milters.rcpt(recipient, options,
                                      self.macros(session, envelope, recipient))
        return _reply(decision, "RCPT", session)

    async def data(self, session: IngressSession, envelope: Any) -> SmtpReply | None:
        milters = self.of(session)
        if milters is None:
            return None
        return _reply(await milters.data(self.macros(session, envelope)), "DATA", session)

    async def message(self, session: IngressSession, envelope: Any,
                      body: bytes) -> milter.Outcome | None:
        milters = self.of(session)
        if milters is None:
            return None
        header_fields, text = milter.split_message(body)
        outcome = await milters.message(header_fields, text, self.macros(session, envelope))
        if outcome.decision.reply is not None:
            _reply(outcome.decision, "END-OF-MESSAGE", session)
        return outcome

    async def end_message(self, session: IngressSession) -> None:
        milters = self.of(session)
        if milters is not None:
            await milters.end_message()

    async def close(self, session: IngressSession) -> None:
        milters = self.of(session)
        if milters is not None:
            await milters.close()


def _reply(decision: milter.Decision, stage: str, session: IngressSession) -> SmtpReply | None:
    if decision.reply is not None:
        log.info("milter-reject: %s from %s: %s", stage, session.describe(), decision.reply)
    return decision.reply
