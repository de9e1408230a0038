"""Header fix-ups, as Postfix's cleanup does them: prepend Received, add
Message-ID and Date when missing.

The Received: header is smtpd's in Postfix; here cleanup writes it from what
ingress-smtp sends, including the comment lines smtpd chose (TLS session,
authenticated sender) between the "from" and the "by" lines.

Postfix parameters: myhostname (in Received and Message-ID).
The header block is scanned by hand, not with the email package: the body
must pass through byte for byte (no re-folding, no charset games), and only
header names at line starts matter here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from email.utils import formatdate

_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


def header_block_end(body: bytes) -> tuple[int, bool]:
    """Offset where the header block ends, and whether a blank line ends it.

    A line that is neither a header nor a continuation ends the block (the
    message then has no blank separator, like a bare body)."""
    pos = 0
    while pos < len(body):
        nl = body.find(b"\n", pos)
        end = len(body) if nl < 0 else nl + 1
        line = body[pos:end]
        if line in (b"\r\n", b"\n"):
            return pos, True
        if not (_HEADER_LINE.match(line) or (pos > 0 and line[:1] in (b" ", b"\t"))):
            return pos, False
        pos = end
    return pos, False


def header_names(headers: bytes) -> set[str]:
    names = set()
    for line in headers.split(b"\n"):
        m = _HEADER_LINE.match(line)
        if m:
            names.add(m.group(0)[:-1].decode("ascii").lower())
    return names


def _comment(text: str) -> str:
    """One comment line as smtpd's comment_sanitize leaves it: printable ASCII,
    balanced parentheses (anything else becomes '?')."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    inner = clean[1:-1] if clean.startswith("(") and clean.endswith(")") else clean
    depth = 0
    kept = []
    for ch in inner:
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                ch = "?"
            else:
                depth -= 1
        kept.append(ch)
    return "(" + "".join(kept) + ")" * (depth + 1)


def received_header(
    *, queue_id: str, myhostname: str, helo: str, client_name: str, client_addr: str,
    protocol: str, recipients: list[str], now: float, comments: Sequence[str] = (),
) -> bytes:
    """Postfix's Received: header, folded as Postfix folds it."""
    notes = "".join(f"\t{_comment(c)}\r\n" for c in comments)
    text = (
        f"Received: from {helo or client_name} ({client_name} [{client_addr}])\r\n{notes}"
        f"\tby {myhostname} (postfleet) with {protocol or 'ESMTP'} id {queue_id}"
        if client_addr
        else f"Received: by {myhostname} (postfleet) with {protocol or 'ESMTP'} id {queue_id}"
    )
    if len(recipients) == 1:
        text += f"\r\n\tfor <{recipients[0]}>; {formatdate(now)}\r\n"
    else:
        text += f";\r\n\t{formatdate(now)}\r\n"
    return text.encode()


def fix_up(
    body: bytes, *, queue_id: str, myhostname: str, helo: str, client_name: str,
    client_addr: str, protocol: str, recipients: list[str], now: float | None = None,
    comments: Sequence[str] = (),
) -> bytes:
    """Return the message with Received prepended and Message-ID/Date added."""
    now = time.time() if now is None else now
    end, has_blank = header_block_end(body)
    names = header_names(body[:end])
    added = b""
    if "message-id" not in names:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
        added += f"Message-ID: <{stamp}.{queue_id}@{myhostname}>\r\n".encode()
    if "date" not in names:
        added += f"Date: {formatdate(now)}\r\n".encode()
    if added and end and not body[:end].endswith(b"\n"):
        added = b"\r\n" + added  # last header line lacked its line end
    separator = b"" if has_blank else b"\r\n"
    received = received_header(
        queue_id=queue_id, myhostname=myhostname, helo=helo, client_name=client_name,
        client_addr=client_addr, protocol=protocol, recipients=recipients, now=now,
        comments=comments,
    )
    return received + body[:end] + added + separator + body[end:]
