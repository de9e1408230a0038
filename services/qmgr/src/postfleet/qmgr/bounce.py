"""Non-delivery notices (Postfix's bounce daemon): an RFC 3464 delivery
status notification back to the envelope sender, queued in the same
transaction that finishes the failed recipients.

Postfix's texts are kept ("Undelivered Mail Returned to Sender", "This is
the mail system at host …") so users and filters recognise them. A notice
has the null sender, so it never bounces in turn.

A notice is queued with the queue store's own ``enqueue`` (the one cleanup
uses), in the transaction that bounces its recipients: Postfix's bounce
daemon submits through cleanup; here the shared function gives the same
queue entry without a second commit that a crash could separate from the
first.

Postfix parameters: myhostname, bounce_queue_lifetime (the notice's own
lifetime in the queue).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from sqlalchemy.ext.asyncio import AsyncConnection

from postfleet.core.db.queue import NewMessage, NewRecipient, bodies, enqueue
from postfleet.core.queueid import new_queue_id

HEADERS_LIMIT = 64 * 1024

NOTICE_TEXT = """\
This is the mail system at host {host}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

{details}
"""


@dataclass(frozen=True)
class BounceItem:
    queue_id: str
    sender: str
    recipient: str
    orig_rcpt: str
    dsn: str
    reply: str
    diagnostic: str
    relay: str
    expired: bool
    arrived_at: datetime


def _detail(item: BounceItem) -> str:
    why = item.reply
    if item.expired:
        why = f"delivery temporarily suspended: {item.reply}; message expired"
    return f"<{item.recipient}>: {why}"


def _status_part(items: list[BounceItem], host: str) -> str:
    first = items[0]
    lines = [
        f"Reporting-MTA: dns; {host}",
        f"X-Postfix-Queue-ID: {first.queue_id}",
        f"Arrival-Date: {format_datetime(first.arrived_at)}",
        "",
    ]
    for item in items:
        relay_host = item.relay.split("[")[0] if item.relay and item.relay != "none" else ""
        status = item.dsn or ("4.4.7" if item.expired else "5.0.0")
        lines += [
            f"Final-Recipient: rfc822; {item.recipient}",
            f"Original-Recipient: rfc822;{item.orig_rcpt}",
            "Action: failed",
            f"Status: {status}",
        ]
        if relay_host:
            lines.append(f"Remote-MTA: dns; {relay_host}")
        # A remote reply is an smtp diagnostic; a local reason is Postfix's X-Postfix.
        code = f"smtp; {item.diagnostic}" if item.diagnostic else f"X-Postfix; {item.reply}"
        lines += [f"Diagnostic-Code: {code}", ""]
    return "\n".join(lines)


def build_notice(items: list[BounceItem], original: bytes, host: str, now: datetime) -> bytes:
    """One notice for one message's failed recipients.

    Written out directly rather than with email.message: the three parts
    have fixed shapes, and the returned headers must go back byte for byte.
    """
    boundary = f"{items[0].queue_id}.{int(now.timestamp())}/{host}"
    text = NOTICE_TEXT.format(host=host, details="\n".join(_detail(i) for i in items))
    head = original.split(b"\r\n\r\n", 1)[0][:HEADERS_LIMIT]
    parts = [
        f"From: MAILER-DAEMON@{host} (Mail Delivery System)",
        f"To: {items[0].sender}",
        "Subject: Undelivered Mail Returned to Sender",
        "Auto-Submitted: auto-replied",
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
        _status_part(items, host),
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    top = "\r\n".join("\r\n".join(p.split("\n")) for p in parts).encode()
    return top + b"\r\n" + head + f"\r\n\r\n--{boundary}--\r\n".encode()


async def queue_bounces(
    conn: AsyncConnection, items: list[BounceItem], host: str, now: datetime,
    lifetime: float,
) -> list[tuple[str, str]]:
    """Queue one notice per original message, from the null sender;
    returns (original, notice) queue ids."""
    by_message: dict[str, list[BounceItem]] = {}
    for item in items:
        by_message.setdefault(item.queue_id, []).append(item)
    originals = await bodies(conn, set(by_message))
    notices: list[NewMessage] = []
    for qid, group in by_message.items():
        sender = group[0].sender
        notices.append(NewMessage(
            queue_id=new_queue_id(), sender="",
            body=build_notice(group, originals.get(qid, b""), host, now),
            recipients=[NewRecipient(sender)], arrived_at=now,
            expires_at=now + timedelta(seconds=lifetime),
        ))
    await enqueue(conn, notices)
    return [(qid, n.queue_id) for qid, n in zip(by_message, notices, strict=True)]
