"""Non-delivery notices (Postfix's bounce daemon): an RFC 3464 delivery
status notification back to the envelope sender, queued in the same
transaction that finishes the failed recipients.

Postfix's texts are kept ("Undelivered Mail Returned to Sender", "This is
the mail system at host …") so users and filters recognise them. A notice
has the null sender, so it never bounces in turn.

Postfix parameters: myhostname, bounce_queue_lifetime (via expires_at).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime, make_msgid

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from postfleet.core.db.models import Message, MessageState, Recipient, RecipientStatus
from postfleet.core.queueid import new_queue_id

# Postfix's bounce_queue_lifetime default.
BOUNCE_LIFETIME = timedelta(days=5)
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


async def build_bounces(
    conn: AsyncConnection, items: list[BounceItem], host: str, now: datetime
) -> list[tuple[str, str]]:
    """Queue one notice per original message; returns (original, notice) ids."""
    by_message: dict[str, list[BounceItem]] = {}
    for item in items:
        by_message.setdefault(item.queue_id, []).append(item)
    rows = await conn.execute(
        select(Message.queue_id, Message.body).where(Message.queue_id.in_(by_message))
    )
    bodies: dict[str, bytes] = {qid: body for qid, body in rows}
    new_ids: list[tuple[str, str]] = []
    for qid, group in by_message.items():
        body = build_notice(group, bodies.get(qid, b""), host, now)
        new_id = new_queue_id()
        await conn.execute(insert(Message).values(
            queue_id=new_id, sender="", size=len(body), body=body, client_name="",
            client_addr="", helo="", protocol="", sasl_username="", trace_id="",
            content_filter="", ret="", envid="", state=MessageState.INCOMING,
            arrived_at=now, expires_at=now + BOUNCE_LIFETIME,
        ))
        await conn.execute(insert(Recipient).values(
            queue_id=new_id, address=group[0].sender, orig_rcpt=group[0].sender, orcpt="",
            notify="", status=RecipientStatus.PENDING, transport="", nexthop="", attempts=0,
            next_attempt_at=now, dsn_status="", last_reply="",
        ))
        new_ids.append((qid, new_id))
    return new_ids
