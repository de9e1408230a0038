"""ingress-smtp: SMTP grammar helpers (Postfix smtpd.c's address and reply
handling): reverse-path/forward-path parsing, reply formatting, and the
translation of aiosmtpd's few built-in replies into Postfix's words.

Postfix parameters: none.
"""

from __future__ import annotations

from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply


def reply_line(reply: SmtpReply) -> str:
    """One reply line; replies without an enhanced status (354) have none."""
    return " ".join(part for part in (str(reply.code), reply.status, reply.text) if part)


# aiosmtpd's own replies that can still reach the client, in Postfix's words.
_BUILTIN_REPLIES = {
    "500 Error: bad syntax": replies.BAD_SYNTAX,
    "500 Error: strict ASCII mode": replies.BAD_SYNTAX,
    "500 Command line too long": replies.LINE_TOO_LONG,
}


def postfix_text(text: str) -> str:
    if text in _BUILTIN_REPLIES:
        return reply_line(_BUILTIN_REPLIES[text])
    if text.startswith('500 Error: command "'):
        return reply_line(replies.UNKNOWN_COMMAND)
    return text


def parse_path(text: str) -> tuple[str, list[str]] | None:
    """``<addr> PARAM=x`` or ``addr PARAM=x`` -> (addr, params); None if malformed.

    A source route (``<@a,@b:user@dom>``) is dropped as RFC 5321 says. The
    address may be empty (``<>``); callers decide whether that is allowed.
    """
    text = text.strip()
    if text.startswith("<"):
        end = _closing_bracket(text)
        if end < 0:
            return None
        inner, rest = text[1:end], text[end + 1:]
        if rest and not rest[0].isspace():
            return None
    else:
        inner, _, rest = text.partition(" ")
    if inner.startswith("@"):
        _, colon, inner = inner.partition(":")
        if not colon:
            return None
    if not _valid_address(inner):
        return None
    return inner, rest.split()


def _closing_bracket(text: str) -> int:
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            return i
    return -1


def _valid_address(address: str) -> bool:
    if not address:
        return True
    quoted = escaped = False
    for ch in address:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ord(ch) < 33 or ord(ch) == 127:
            if not (quoted and ch == " "):
                return False
        elif ch in "<>()," and not quoted:
            return False
    if quoted:
        return False
    local, at, domain = address.rpartition("@")
    return not at or bool(local and domain)


def after_keyword(arg: str | None, keyword: str) -> str | None:
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword):]


def unsupported(param: str) -> SmtpReply:
    return replies.UNSUPPORTED_OPTION.with_text(f"{replies.UNSUPPORTED_OPTION.text}: {param}")
