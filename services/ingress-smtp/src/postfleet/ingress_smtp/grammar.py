"""ingress-smtp: SMTP grammar helpers (Postfix smtpd.c's address and reply
handling): reverse-path/forward-path parsing, reply formatting, and the
translation of aiosmtpd's few built-in replies into Postfix's words.

MAIL and RCPT parameters (smtpd.c mail_cmd, rcpt_cmd): SIZE, BODY, AUTH,
SMTPUTF8 (RFC 6531) and the RFC 3461 DSN parameters RET and ENVID on MAIL;
NOTIFY and ORCPT on RCPT. Each is accepted once; anything else is ``555
5.5.4 Unsupported option``.

Postfix parameters: message_size_limit and smtputf8_enable (passed in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from postfleet.core.smtp import dsn, replies
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
        if 0xD800 <= ord(ch) <= 0xDFFF:  # a byte that was not UTF-8 (surrogateescape)
            return False
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


@dataclass(frozen=True, slots=True)
class MailParams:
    """What MAIL FROM's parameters asked for."""

    body: str = ""  # 7BIT, 8BITMIME or ""
    smtputf8: bool = False
    ret: str = ""
    envid: str = ""


def mail_parameters(
    params: list[str], size_limit: int, smtputf8_enable: bool
) -> MailParams | SmtpReply:
    """MAIL FROM's parameters, or the reply that refuses them."""
    body = ""
    smtputf8 = seen_auth = False
    found: dict[str, str] = {}
    for param in params:
        key, eq, value = param.partition("=")
        key = key.upper()
        if key == "SIZE" and eq:
            if not value.isdigit():
                return replies.BAD_SIZE_SYNTAX
            if size_limit and int(value) > size_limit:
                return replies.SIZE_EXCEEDED
        elif key == "BODY" and eq:
            if value.upper() not in ("7BIT", "8BITMIME"):
                return replies.BAD_BODY_SYNTAX
            body = value.upper()
        elif key == "SMTPUTF8" and not eq and smtputf8_enable:
            smtputf8 = True
        elif key == "AUTH" and eq:  # RFC 4954 5: accepted, as Postfix, and not trusted
            if seen_auth:
                return replies.MULTIPLE_AUTH_PARAM
            seen_auth = True
        elif key in _MAIL_DSN and eq:
            refusal = _dsn_parameter(_MAIL_DSN, found, key, value)
            if refusal is not None:
                return refusal
        else:
            return unsupported(param)
    return MailParams(body, smtputf8, found.get("RET", ""), found.get("ENVID", ""))


_DsnTable = dict[str, tuple[Callable[[str], str], SmtpReply]]
_MAIL_DSN: _DsnTable = {
    "RET": (dsn.parse_ret, replies.BAD_RET_SYNTAX),
    "ENVID": (dsn.xtext_decode, replies.BAD_ENVID_SYNTAX),
}
_RCPT_PARAMS: _DsnTable = {
    "NOTIFY": (dsn.parse_notify, replies.BAD_NOTIFY_SYNTAX),
    "ORCPT": (dsn.parse_orcpt, replies.BAD_ORCPT_SYNTAX),
}


def rcpt_parameters(params: list[str]) -> tuple[str, str] | SmtpReply:
    """RCPT TO's (NOTIFY, ORCPT) in their stored forms, or the reply that
    refuses them."""
    found: dict[str, str] = {}
    for param in params:
        key, eq, value = param.partition("=")
        key = key.upper()
        if key not in _RCPT_PARAMS or not eq:
            return unsupported(param)
        refusal = _dsn_parameter(_RCPT_PARAMS, found, key, value)
        if refusal is not None:
            return refusal
    return found.get("NOTIFY", ""), found.get("ORCPT", "")


def _dsn_parameter(table: _DsnTable, found: dict[str, str], key: str,
                   value: str) -> SmtpReply | None:
    """Parse one DSN parameter into ``found``; its refusal when it is bad
    or given twice."""
    parse, bad = table[key]
    if key in found:
        return bad
    try:
        found[key] = parse(value)
    except dsn.DsnSyntaxError:
        return bad
    return None


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]")


def etrn_site(arg: str | None) -> str | SmtpReply:
    """ETRN's argument (a leading "@" or "#" dropped, as Postfix does): a
    host name or an address literal, or the reply that refuses it."""
    words = (arg or "").split()
    if len(words) != 1:
        return replies.ETRN_SYNTAX
    site = words[0][1:] if words[0][:1] in ("@", "#") else words[0]
    if not (_HOSTNAME.fullmatch(site) or _LITERAL.fullmatch(site)) or len(site) > 255:
        return replies.ETRN_BAD_DOMAIN
    return site


def bdat_arguments(arg: str | None) -> tuple[int, bool] | None:
    """``BDAT count [LAST]``: (count, last), or None when malformed."""
    words = (arg or "").split()
    if not 1 <= len(words) <= 2 or not words[0].isdigit():
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(words[0]), len(words) == 2
