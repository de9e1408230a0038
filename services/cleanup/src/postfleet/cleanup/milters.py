"""cleanup: non_smtpd_milters -- the milters Postfix's cleanup runs for mail
that did not come through smtpd (here: ``postfleet sendmail`` and other
submissions without a client address), so that a site's OpenDKIM or
OpenDMARC also sees locally submitted mail.

Each message gets its own conversation: CONNECT as ``localhost
[127.0.0.1]`` (Postfix's non-SMTP client), HELO with myhostname, MAIL, one
RCPT per recipient, DATA, the message as queued (Received: included), end
of message. A refusal refuses the submission with the milter's reply
(sendmail reports it), a discard drops the message, a quarantine queues it
on hold; header, body, sender and recipient edits apply to what is queued.
Mail re-submitted by a content filter (``skip_filter``) and submissions
with receive_override_options = no_milters are left alone.

Postfix parameters: non_smtpd_milters, milter_* (postfleet.core.milter),
myhostname.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from postfleet.cleanup.settings import CleanupSettings
from postfleet.core.db.queue import NewMessage, NewRecipient
from postfleet.core.db.status import MessageState
from postfleet.core.milter.client import Milters, split_message
from postfleet.core.proto.cleanup.v1 import cleanup_pb2
from postfleet.core.smtp.replies import SmtpReply


@dataclass
class MilterResult:
    message: NewMessage
    refusal: SmtpReply | None = None
    discard: bool = False


class NonSmtpdMilters:
    def __init__(self, settings: CleanupSettings) -> None:
        self.settings = settings
        self.specs = settings.milters(settings.non_smtpd_milters)
        self.macro_lists = settings.stage_macros()

    def applies(self, env: cleanup_pb2.Envelope) -> bool:
        return bool(self.specs) and not env.client.address and not env.skip_filter \
            and not env.overrides.no_milters

    async def run(self, message: NewMessage) -> MilterResult:
        myhostname = self.settings.myhostname
        macros = {"j": myhostname, "i": message.queue_id,
                  "{daemon_name}": self.settings.milter_macro_daemon_name.replace(
                      "$myhostname", myhostname),
                  "_": "localhost [127.0.0.1]", "{mail_addr}": message.sender}
        chain = Milters(self.specs, self.macro_lists)
        try:
            for step in (lambda: chain.connect("localhost", "127.0.0.1", 0, macros),
                         lambda: chain.helo(myhostname, macros),
                         lambda: chain.mail(message.sender, [], macros)):
                decision = await step()
                if decision.final:
                    return MilterResult(message, decision.reply, decision.discard)
            for rcpt in message.recipients:
                decision = await chain.rcpt(rcpt.address, [],
                                            {**macros, "{rcpt_addr}": rcpt.address})
                if decision.final:
                    return MilterResult(message, decision.reply, decision.discard)
            decision = await chain.data(macros)
            if decision.final:
                return MilterResult(message, decision.reply, decision.discard)
            outcome = await chain.message(*split_message(message.body), macros)
        finally:
            await chain.close()
        decision = outcome.decision
        if decision.final:
            return MilterResult(message, decision.reply, decision.discard)
        dropped = {r.lower() for r in outcome.del_recipients}
        recipients = [r for r in message.recipients if r.address.lower() not in dropped]
        recipients += [NewRecipient(r, r) for r in outcome.add_recipients]
        changes: dict[str, object] = {"body": outcome.message(), "recipients": recipients}
        if outcome.sender is not None:
            changes["sender"] = outcome.sender
        if decision.hold:
            changes["state"] = MessageState.HOLD
        edited = dataclasses.replace(message, **changes)  # type: ignore[arg-type]
        return MilterResult(edited, discard=not recipients)
