"""ingress-smtp: SMTP grammar helpers (Postfix smtpd.c's address and reply
handling): reverse-path/forward-path parsing, reply formatting, and the
translation of aiosmtpd's few built-in replies into Postfix's words.

Postfix parameters: none.
"""

from __future__ import annotations

from typing import Literal

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


def _plain_characters(text: str) -> tuple[list[tuple[int, str, bool]], bool]:
    """The characters of ``text`` that are not quoting -- (index, character,
    inside a quoted string) -- and whether a quoted string is left open. A
    backslash escapes the next character (both are passed over); a double
    quote opens or closes a quoted string."""
    plain: list[tuple[int, str, bool]] = []
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        else:
            plain.append((i, ch, quoted))
    return plain, quoted


def _closing_bracket(text: str) -> int:
    plain, _ = _plain_characters(text)
    return next((i for i, ch, quoted in plain if ch == ">" and not quoted), -1)


def _valid_address(address: str) -> bool:
    if not address:
        return True
    plain, left_open = _plain_characters(address)
    if left_open:
        return False
    for _, ch, quoted in plain:
        if ord(ch) < 33 or ord(ch) == 127:
            if not (quoted and ch == " "):
                return False
        elif ch in "<>()," and not quoted:
            return False
    local, at, domain = address.rpartition("@")
    return not at or bool(local and domain)


def after_keyword(arg: str | None, keyword: str) -> str | None:
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword):]


# command -> (keyword, its syntax reply, a bad address's reply, null path allowed)
_ENVELOPE_PATHS: dict[str, tuple[str, SmtpReply, SmtpReply, bool]] = {
    "MAIL": ("FROM:", replies.MAIL_SYNTAX, replies.BAD_SENDER_SYNTAX, True),
    "RCPT": ("TO:", replies.RCPT_SYNTAX, replies.BAD_ADDRESS_SYNTAX, False),
}


def envelope_path(
    arg: str | None, command: Literal["MAIL", "RCPT"]
) -> tuple[str, list[str]] | SmtpReply:
    """The argument of ``MAIL FROM:<sender> params`` (the null sender ``<>``
    allowed) or ``RCPT TO:<recipient> params``: (address, params), or the
    reply that refuses it."""
    keyword, syntax, bad_address, null_ok = _ENVELOPE_PATHS[command]
    rest = after_keyword(arg, keyword)
    if rest is None:
        return syntax
    path = parse_path(rest)
    if path is None or not (path[0] or null_ok):
        return bad_address
    return path


def unsupported(param: str) -> SmtpReply:
    return replies.UNSUPPORTED_OPTION.with_text(f"{replies.UNSUPPORTED_OPTION.text}: {param}")
