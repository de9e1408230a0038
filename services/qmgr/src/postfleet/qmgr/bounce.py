"""Delivery status notifications (Postfix's bounce daemon): RFC 3464
``multipart/report; report-type=delivery-status`` messages, queued in the
same transaction that finishes (or defers) the recipients they report.

Three kinds, with Postfix's built-in templates (bounce_templates.c), so
users and filters recognise them:

- failure ("Undelivered Mail Returned to Sender"): the recipients whose
  NOTIFY asks for it (FAILURE, or not given; never NEVER), with the
  original message (RET=FULL or not given, up to bounce_size_limit) or its
  headers (RET=HDRS);
- delay ("Delayed Mail (still being retried)"), once a message has waited
  delay_warning_time: the deferred recipients whose NOTIFY asks for DELAY
  (or not given), with the headers, ``Will-Retry-Until`` its expiry;
- success ("Successful Mail Delivery Report"), for NOTIFY=SUCCESS:
  ``Action: delivered`` after final delivery (a mailbox), ``relayed`` when
  the next hop did not offer DSN; nothing when it did (it got the request).

Who gets them follows bounce_notify_service.c and its siblings: the
sender, from the null sender; a copy to the postmaster when notify_classes
asks (``bounce``: bounce_notice_recipient, headers only; ``delay``:
delay_notice_recipient), from double_bounce_sender. A failed notice (a
message from the null sender) goes to 2bounce_notice_recipient when
notify_classes has ``2bounce`` or ``bounce``, with all of it, and is
dropped otherwise; a failed postmaster notice (from double_bounce_sender)
is dropped with a warning. So notices never loop.

A notice is queued with the queue store's own ``enqueue`` (the one cleanup
uses), in the transaction that settles its recipients: Postfix's bounce
daemon submits through cleanup; the shared function gives the same queue
entry without a second commit that a crash could separate from the first.

Postfix parameters: myhostname, myorigin (bare notice recipients and
double_bounce_sender are qualified with it), notify_classes,
bounce_notice_recipient, 2bounce_notice_recipient, delay_notice_recipient,
double_bounce_sender, bounce_size_limit, delay_warning_time,
bounce_queue_lifetime (the notice's own lifetime in the queue).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from sqlalchemy.ext.asyncio import AsyncConnection

from postfleet.core.db.queue import MessageFacts, NewMessage, NewRecipient, bodies, enqueue
from postfleet.core.notices import (
    DEFAULT_NOTIFY_CLASSES,
    DOUBLE_BOUNCE,
    POSTMASTER,
    line_wrap,
    qualify,
)
from postfleet.core.queueid import new_queue_id
from postfleet.core.smtp.dsn import notify_wants

HEADERS_LIMIT = 64 * 1024

_CLOSING = "                   The mail system"
_HELP = """For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message."""


class Kind(enum.Enum):
    """A notice's template: subject, its postmaster copy's, the Action."""

    FAILURE = ("Undelivered Mail Returned to Sender", "Postmaster Copy: Undelivered Mail",
               "failed", "FAILURE", "non-delivery")
    DELAY = ("Delayed Mail (still being retried)", "Postmaster Warning: Delayed Mail",
             "delayed", "DELAY", "delay")
    SUCCESS = ("Successful Mail Delivery Report", "Successful Mail Delivery Report",
               "", "SUCCESS", "delivery status")

    def __init__(self, subject: str, postmaster_subject: str, action: str, notify: str,
                 log_word: str) -> None:
        self.subject = subject
        self.postmaster_subject = postmaster_subject
        self.action = action  # "" : the item's own (delivered or relayed)
        self.notify = notify  # the NOTIFY word that asks for it
        self.log_word = log_word  # "sender non-delivery notification: ID"


@dataclass(frozen=True)
class NoticeItem:
    """One recipient as a notice reports it."""

    recipient: str
    orig_rcpt: str
    orcpt: str
    notify: str
    dsn: str
    reply: str
    diagnostic: str = ""  # the remote reply, for Diagnostic-Code: smtp;
    relay: str = ""
    expired: bool = False
    action: str = ""  # success: delivered or relayed


@dataclass(frozen=True)
class NoticePolicy:
    """The parameters that decide who gets which notice, and their texts."""

    notify_classes: frozenset[str] = frozenset(DEFAULT_NOTIFY_CLASSES)
    bounce_notice_recipient: str = POSTMASTER
    two_bounce_notice_recipient: str = POSTMASTER
    delay_notice_recipient: str = POSTMASTER
    double_bounce_sender: str = DOUBLE_BOUNCE
    bounce_size_limit: int = 50000
    delay_warning_time: float = 0.0
    bounce_queue_lifetime: float = 5 * 86400.0
    myorigin: str = ""  # empty: myhostname

    def qualify(self, address: str, myhostname: str) -> str:
        return qualify(address, self.myorigin or myhostname)


@dataclass
class Notice:
    """A notice to queue: to whom, from whom, about which recipients."""

    kind: Kind
    queue_id: str  # the message it reports on
    sender: str  # "" or the double-bounce address
    to: str
    items: list[NoticeItem]
    postmaster_copy: bool
    ret: str  # FULL: the whole original (within bounce_size_limit), HDRS: headers
    new_id: str = field(default_factory=new_queue_id)

    @property
    def log_line(self) -> str:
        who = "postmaster" if self.postmaster_copy else "sender"
        return f"{who} {self.kind.log_word} notification: {self.new_id}"


def plan(kind: Kind, msg: MessageFacts, items: Sequence[NoticeItem], policy: NoticePolicy,
         myhostname: str) -> tuple[list[Notice], str]:
    """The notices Postfix's bounce daemon would send for ``items`` of one
    message, and a mail log line when it sends none on purpose ("")."""
    double_bounce = policy.qualify(policy.double_bounce_sender, myhostname)
    classes = policy.notify_classes
    every = list(items)
    if msg.sender.lower() == double_bounce.lower():
        if kind is Kind.SUCCESS:
            return [], "not sending trace/success notification for double-bounce message"
        return [], "warning: undeliverable postmaster notification discarded"
    if not msg.sender:  # a notice itself: at most one copy to the postmaster
        if kind is Kind.FAILURE and classes & {"2bounce", "bounce"}:
            to = policy.two_bounce_notice_recipient
        elif kind is Kind.DELAY and "delay" in classes:
            to = policy.delay_notice_recipient
        elif kind is Kind.SUCCESS and "2bounce" in classes:
            to = policy.two_bounce_notice_recipient
        else:
            return [], ""
        return [Notice(kind, msg.queue_id, double_bounce, policy.qualify(to, myhostname),
                       every, True, "FULL")], ""
    wanted = [i for i in items if notify_wants(i.notify, kind.notify)]
    notices = []
    if wanted:
        ret = msg.ret or ("HDRS" if kind is not Kind.FAILURE else "FULL")
        notices.append(Notice(kind, msg.queue_id, "", msg.sender, wanted, False, ret))
    copy_to = {Kind.FAILURE: ("bounce", policy.bounce_notice_recipient),
               Kind.DELAY: ("delay", policy.delay_notice_recipient)}.get(kind)
    if copy_to is not None and copy_to[0] in classes:
        notices.append(Notice(kind, msg.queue_id, double_bounce,
                              policy.qualify(copy_to[1], myhostname), every, True, "HDRS"))
    return notices, ""


# -- the notice's text -----------------------------------------------------------


def _intro(kind: Kind, host: str, msg: MessageFacts, policy: NoticePolicy) -> str:
    head = f"This is the mail system at host {host}."
    if kind is Kind.FAILURE:
        return f"""{head}

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

{_HELP}

{_CLOSING}"""
    if kind is Kind.DELAY:
        hours = int(policy.delay_warning_time // 3600)
        days = int((msg.expires_at - msg.arrived_at).total_seconds() // 86400)
        return f"""{head}

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than {hours} hour(s).
It will be retried until it is {days} day(s) old.

{_HELP}

{_CLOSING}"""
    return f"""{head}

Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.

{_CLOSING}"""


def _detail(kind: Kind, item: NoticeItem) -> str:
    """The human-readable line for one recipient (bounce_recipient_log)."""
    why = item.reply
    if item.expired:
        why = f"delivery temporarily suspended: {item.reply}; message expired"
    elif kind is Kind.SUCCESS and item.relay and item.relay != "none":
        why = f"delivery via {item.relay}: {item.reply}"
    expanded = (f" (expanded from <{item.orig_rcpt}>)"
                if item.orig_rcpt and item.orig_rcpt != item.recipient else "")
    return "\n".join(line_wrap(f"<{item.recipient}>{expanded}: {why}", 79, 4))


def _status_part(notice: Notice, msg: MessageFacts, host: str) -> str:
    lines = [f"Reporting-MTA: dns; {host}"]
    if msg.envid:
        lines.append(f"Original-Envelope-Id: {msg.envid}")
    lines.append(f"X-Postfix-Queue-ID: {msg.queue_id}")
    if msg.sender:
        lines.append(f"X-Postfix-Sender: rfc822; {msg.sender}")
    lines += [f"Arrival-Date: {format_datetime(msg.arrived_at)}", ""]
    for item in notice.items:
        relay_host = item.relay.split("[")[0] if item.relay and item.relay != "none" else ""
        status = item.dsn or ("4.4.7" if item.expired else "5.0.0")
        lines.append(f"Final-Recipient: rfc822; {item.recipient}")
        lines.append(f"Original-Recipient: {item.orcpt}" if item.orcpt
                     else f"Original-Recipient: rfc822;{item.orig_rcpt or item.recipient}")
        lines += [f"Action: {notice.kind.action or item.action}", f"Status: {status}"]
        if relay_host:
            lines += line_wrap(f"Remote-MTA: dns; {relay_host}", 79, 4)
        # A remote reply is an smtp diagnostic; a local reason is Postfix's X-Postfix.
        code = f"smtp; {item.diagnostic}" if item.diagnostic else f"X-Postfix; {item.reply}"
        lines += line_wrap(f"Diagnostic-Code: {code}", 79, 4)
        if notice.kind is Kind.DELAY:
            lines.append(f"Will-Retry-Until: {format_datetime(msg.expires_at)}")
        lines.append("")
    return "\n".join(lines)


def build_notice(notice: Notice, msg: MessageFacts, original: bytes, host: str,
                 now: datetime, policy: NoticePolicy) -> bytes:
    """The notice as queued (CRLF lines).

    Written out directly rather than with email.message: the three parts
    have fixed shapes, and the returned message must go back byte for byte.
    """
    kind = notice.kind
    headers_only = (notice.ret == "HDRS" or not original
                    or 0 < policy.bounce_size_limit < len(original))
    boundary = f"{msg.queue_id}.{int(now.timestamp())}/{host}"
    details = "\n\n".join(_detail(kind, i) for i in notice.items)
    text = f"{_intro(kind, host, msg, policy)}\n\n{details}\n"
    # header_from_format = standard (Postfix >= 3.3's default).
    sender_line = f"Mail Delivery System <MAILER-DAEMON@{host}>"
    subject = kind.postmaster_subject if notice.postmaster_copy else kind.subject
    undelivered = "Undelivered " if kind is not Kind.SUCCESS else ""
    what = "Message Headers" if headers_only else "Message"
    parts = [
        f"From: {sender_line}",
        f"To: {notice.to}",
        f"Subject: {subject}",
        "Auto-Submitted: auto-replied" if not notice.postmaster_copy
        else "Auto-Submitted: auto-generated",
        f"Date: {format_datetime(now)}",
        f"Message-ID: {make_msgid(domain=host)}",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        text,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        _status_part(notice, msg, host),
        f"--{boundary}",
        f"Content-Description: {undelivered}{what}",
        f"Content-Type: {'text/rfc822-headers' if headers_only else 'message/rfc822'}",
        "",
        f"Return-Path: <{msg.sender}>",
    ]
    top = "\r\n".join("\r\n".join(p.split("\n")) for p in parts).encode()
    if headers_only:
        returned = original.split(b"\r\n\r\n", 1)[0][:HEADERS_LIMIT] + b"\r\n"
    else:
        returned = original if original.endswith(b"\r\n") else original + b"\r\n"
    return top + b"\r\n" + returned + f"\r\n--{boundary}--\r\n".encode()


# -- queueing ---------------------------------------------------------------------


async def queue_notices(
    conn: AsyncConnection, notices: Sequence[Notice], messages: dict[str, MessageFacts],
    host: str, now: datetime, policy: NoticePolicy,
) -> None:
    """Queue each notice (a message of its own, one recipient), in the
    caller's transaction."""
    if not notices:
        return
    originals = await bodies(conn, {n.queue_id for n in notices})
    queued = []
    for notice in notices:
        msg = messages[notice.queue_id]
        body = build_notice(notice, msg, originals.get(notice.queue_id, b""), host, now,
                            policy)
        queued.append(NewMessage(
            queue_id=notice.new_id, sender=notice.sender, body=body,
            recipients=[NewRecipient(notice.to)], arrived_at=now,
            expires_at=now + timedelta(seconds=policy.bounce_queue_lifetime),
        ))
    await enqueue(conn, queued)
