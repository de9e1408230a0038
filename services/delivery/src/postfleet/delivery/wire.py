"""What the smtp and lmtp clients share: the DATA framing, SMTP paths, and
how a server's reply becomes an outcome with Postfix's wording
("host h[ip] said: 550 5.1.1 ... (in reply to RCPT TO command)").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiosmtplib import SMTPResponse

from postfleet.core.smtp.replies import parse_reply
from postfleet.delivery.outcome import Outcome, outcome

# -- content -------------------------------------------------------------------

_LEADING_DOT = re.compile(rb"(?m)^\.")


def dot_stuff(body: bytes) -> bytes:
    """The DATA payload: content with leading dots doubled (RFC 5321 4.5.2),
    a final line ending, and the terminating ``.<CRLF>``. Applied exactly once."""
    if not body:
        return b".\r\n"
    if body.startswith(b".") or b"\n." in body:
        body = _LEADING_DOT.sub(b"..", body)
    if not body.endswith(b"\n"):
        body += b"\r\n"
    return body + b".\r\n"


# -- addresses -----------------------------------------------------------------

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
                       r"(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+)*")


def smtp_path(address: str) -> str:
    """Internal address form to the SMTP ``<path>``, quoting the local part
    when it is not a dot-atom (as Postfix's quote_822_local does)."""
    if not address:
        return "<>"
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not _DOT_ATOM.fullmatch(local) and not (
        len(local) > 1 and local.startswith('"') and local.endswith('"')
    ):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>" if at else f"<{local}>"


# -- replies -------------------------------------------------------------------


def one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def reply_text(resp: SMTPResponse) -> str:
    return f"{resp.code} {one_line(resp.message)}".rstrip()


def reply_dsn(resp: SMTPResponse, force_class: str | None = None) -> str:
    """The enhanced status of a reply, its class made to agree with the code."""
    klass = str(resp.code)[:1]
    if klass not in ("2", "4", "5"):
        klass = "4"  # an unexpected reply: try again later
    klass = force_class or klass
    status = parse_reply(resp.code, one_line(resp.message)).status
    return klass + status[1:] if status[:1] != klass else status


def rejected(label: str, resp: SMTPResponse, command: str) -> Outcome:
    """A refusal; an unexpected 1xx-3xx reply counts as a temporary one."""
    text = f"host {label} said: {reply_text(resp)} (in reply to {command} command)"
    return outcome(reply_dsn(resp, None if resp.code >= 400 else "4"), text, reply_text(resp))


def mail_params(
    extensions: Mapping[str, str], body: bytes, addresses: list[str], label: str
) -> tuple[list[bytes], str, Outcome | None]:
    """MAIL FROM parameters from the server's EHLO/LHLO reply (SIZE,
    SMTPUTF8, BODY=8BITMIME), the envelope encoding, or the outcome that
    stops the transaction before MAIL (as Postfix's smtp/lmtp do)."""
    params: list[bytes] = []
    if "size" in extensions:
        limit_text = extensions.get("size", "")
        limit = int(limit_text) if limit_text.isdigit() else 0
        if 0 < limit < len(body):
            text = f"message size {len(body)} exceeds size limit {limit} of server {label}"
            return params, "ascii", outcome("5.3.4", text)
        params.append(b"SIZE=%d" % len(body))
    utf8 = not all(a.isascii() for a in addresses)
    if utf8:
        if "smtputf8" not in extensions:
            text = f"SMTPUTF8 is required, but was not offered by host {label}"
            return params, "utf-8", outcome("5.6.7", text)
        params.append(b"SMTPUTF8")
    if not body.isascii() and "8bitmime" in extensions:
        params.append(b"BODY=8BITMIME")
    return params, "utf-8" if utf8 else "ascii", None
