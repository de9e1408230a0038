"""ingress-smtp: the session transcript smtpd mails to the postmaster
(Postfix's smtpd_chat.c: smtpd_chat_notify, chat_reset).

Every command line ("In:  ", AUTH's arguments left out) and every reply
line ("Out: ") is kept; each refusal is classed as Postfix's smtpd classes
it -- ``bounce`` (a restriction refused an unknown address: X.1.0,
X.1.1), ``policy`` (other restrictions, size, recipient and rate limits,
X.7.X refusals), ``resource`` (the queue could not take the message:
4.3.0, 4.3.1), ``software`` (4.3.5, a server error), ``protocol`` (syntax
and sequence errors). When a session ends, or a transaction ends with more
than smtpd_history_flush_threshold lines kept, and one of its classes is in
notify_classes, the transcript goes from double_bounce_sender to
bounce_notice_recipient (a ``bounce`` among its classes) or
error_notice_recipient: "Subject: postfleet SMTP server: errors from
name[ip]", "Transcript of session follows.".

Postfix parameters: notify_classes, error_notice_recipient,
bounce_notice_recipient, double_bounce_sender, smtpd_history_flush_threshold
(through SmtpdParams), myorigin (qualifies them; from the routing snapshot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

from postfleet.core.notices import line_wrap
from postfleet.core.smtp import replies
from postfleet.ingress_smtp.settings import MAIL_NAME

# Lines kept at most: a session that never ends a transaction (NOOP after
# NOOP) keeps only its last ones.
MAX_LINES = 1000
_POLICY_STATUSES = frozenset({
    replies.SIZE_EXCEEDED.status, replies.TOO_MANY_RECIPIENTS.status})
_RESOURCE_STATUSES = frozenset({
    replies.QUEUE_UNAVAILABLE.status, replies.INSUFFICIENT_STORAGE.status})


def error_class(line: str) -> str | None:
    """The class of a refusal line ("550 5.7.1 ..."): None for one that is
    not an error (2xx, 3xx) or ends the session (421)."""
    code, _, rest = line.partition(" ")
    if code[:1] not in ("4", "5") or code == "421":
        return None
    status = rest.split(" ", 1)[0] if rest[:1].isdigit() else ""
    if status in _RESOURCE_STATUSES:
        return "resource"
    if status == replies.CONFIG_ERROR.status:
        return "software"
    if status[2:4] == "7." or status in _POLICY_STATUSES:
        return "policy"
    return "protocol"


@dataclass
class Transcript:
    """One session's conversation since the last reset, and its error classes."""

    lines: list[str] = field(default_factory=list)
    classes: set[str] = field(default_factory=set)
    reason: str = ""
    # The class a hook has already decided for the next refusal (a
    # restriction: policy, whatever its status says).
    next_class: str | None = None

    def command(self, name: str, arg: str | None) -> None:
        shown = arg.split()[0] if name == "AUTH" and arg else arg  # never the credentials
        self._keep(f"In:  {name} {shown}" if shown else f"In:  {name}")

    def reply(self, line: str) -> None:
        self._keep(f"Out: {line}")
        klass = error_class(line)
        if klass is not None and line[3:4] != "-":
            self.classes.add(self.next_class or klass)
            self.next_class = None

    def _keep(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) > MAX_LINES:
            del self.lines[:len(self.lines) - MAX_LINES]

    def take(self, notify: set[str]) -> tuple[list[str], str, set[str]] | None:
        """Start afresh; what to mail (the lines, the abort reason, the
        error classes) when the session had errors of a class in ``notify``."""
        lines, classes, reason = self.lines, self.classes, self.reason
        self.lines, self.classes, self.reason = [], set(), ""
        return (lines, reason, classes) if classes & notify and lines else None


def restriction_class(status: str) -> str:
    """A restriction's refusal: ``bounce`` for an address it knows to be
    undeliverable (Postfix's MAIL_ERROR_BOUNCE: X.1.0, X.1.1), else ``policy``."""
    return "bounce" if status[1:] in (".1.0", ".1.1") else "policy"


def notice(lines: list[str], reason: str, client: str, to: str, myorigin: str) -> bytes:
    """The postmaster's transcript message (CRLF lines), Postfix's layout:
    each line of the conversation wrapped at 78 columns, one space first."""
    body = [
        f"From: Mail Delivery System <MAILER-DAEMON@{myorigin}>",
        f"To: Postmaster <{to}>",
        f"Subject: {MAIL_NAME} SMTP server: errors from {client}",
        f"Date: {format_datetime(datetime.now(UTC))}",
        "Auto-Submitted: auto-generated",
        "",
        "Transcript of session follows.",
        "",
    ]
    for line in lines:
        printable = "".join(c if c.isprintable() else "?" for c in line)
        body += [" " + part for part in line_wrap(printable, 78, 4)]
    body.append("")
    if reason:
        body.append(f"Session aborted, reason: {reason}")
    body += ["", "For other details, see the local mail logfile", ""]
    return "\r\n".join(body).encode("utf-8")
