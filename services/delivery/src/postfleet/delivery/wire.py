"""What the smtp and lmtp clients share: the DATA framing, SMTP paths, the
MAIL and RCPT parameters (SIZE, BODY, SMTPUTF8 and, to a server that offers
DSN, RFC 3461's ENVID, RET, ORCPT and NOTIFY, as Postfix's smtp_proto.c
sends them), and how a server's reply becomes an outcome with Postfix's
wording ("host h[ip] said: 550 5.1.1 ... (in reply to RCPT TO command)").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiosmtplib import SMTPResponse

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.smtp.dsn import xtext_encode
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
    extensions: Mapping[str, str], body: bytes, addresses: list[str], label: str, *,
    smtputf8: bool = False, ret: str = "", envid: str = "",
) -> tuple[list[bytes], str, Outcome | None]:
    """MAIL FROM parameters from the server's EHLO/LHLO reply (SIZE,
    BODY=8BITMIME, SMTPUTF8, ENVID and RET), the envelope encoding, or the
    outcome that stops the transaction before MAIL (as Postfix's smtp/lmtp do).

    SMTPUTF8 (Postfix): requested from a server that offers it when the
    sender asked for it; when the server does not, the message bounces 5.6.7
    only if something needs it -- a UTF-8 address, or (asked for) a UTF-8
    header -- and goes without it otherwise."""
    params: list[bytes] = []
    if "size" in extensions:
        limit_text = extensions.get("size", "")
        limit = int(limit_text) if limit_text.isdigit() else 0
        if 0 < limit < len(body):
            text = f"message size {len(body)} exceeds size limit {limit} of server {label}"
            return params, "ascii", outcome("5.3.4", text)
        params.append(b"SIZE=%d" % len(body))
    utf8 = not all(a.isascii() for a in addresses)
    needed = utf8 or (smtputf8 and not _headers(body).isascii())
    if "smtputf8" in extensions:
        if smtputf8 or utf8:
            params.append(b"SMTPUTF8")
    elif needed:
        text = f"SMTPUTF8 is required, but was not offered by host {label}"
        return params, "utf-8", outcome("5.6.7", text)
    if not body.isascii() and "8bitmime" in extensions:
        params.append(b"BODY=8BITMIME")
    if "dsn" in extensions:
        if envid:
            params.append(b"ENVID=" + xtext_encode(envid).encode())
        if ret:
            params.append(b"RET=" + ret.encode())
    return params, "utf-8" if utf8 else "ascii", None


def _headers(body: bytes) -> bytes:
    return body.split(b"\r\n\r\n", 1)[0]


def rcpt_params(extensions: Mapping[str, str], rcpt: delivery_pb2.JobRecipient) -> bytes:
    """RCPT TO's DSN parameters for a server that offers DSN: ORCPT (the
    one received, else the original recipient as Postfix adds it) and
    NOTIFY; nothing for a server that does not."""
    if "dsn" not in extensions:
        return b""
    orcpt = rcpt.dsn_orcpt or (f"rfc822;{rcpt.orcpt or rcpt.address}")
    kind, _, address = orcpt.partition(";")
    params = [f"ORCPT={kind};{xtext_encode(address)}"]
    if rcpt.notify:
        params.append(f"NOTIFY={rcpt.notify}")
    return (" " + " ".join(params)).encode()
