"""header_checks, mime_header_checks, nested_header_checks and body_checks
applied to one message, with Postfix's actions (header_checks(5)).

The message is walked as Postfix's MIME parser does: the primary headers go
to header_checks, MIME headers (Content-*, MIME-Version) and the headers of
multipart body parts to mime_header_checks, the headers of an attached
message (message/rfc822) to nested_header_checks; every other line,
multipart boundaries included, to body_checks, at most
body_checks_size_limit bytes of each body part. A header is matched as one
logical header (continuation lines joined with a newline), a body line
without its line end. Lines nobody changed pass through byte for byte.

Actions: REJECT [text] (the message is refused: ``550 5.7.1 message content
rejected``, or the text with 5.7.1 put before it unless it starts with its
own 4.x.x/5.x.x code), DISCARD, HOLD, REDIRECT user@domain, FILTER
transport:destination, PREPEND text, REPLACE text, IGNORE (and STRIP),
WARN, INFO, DUNNO and OK (nothing), PASS (no more checks on this message).
After REJECT, DISCARD, REDIRECT or PASS no further check runs, as in
Postfix. BCC is not supported (logged and ignored).

Why hand-written: the email package re-folds and re-encodes what it parses,
and the actions must edit a message in place, byte for byte elsewhere.

Postfix parameters: header_checks, mime_header_checks (default
$header_checks), nested_header_checks (default $header_checks),
body_checks, body_checks_size_limit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from postfleet.core.checks.tables import PatternTable, load_table
from postfleet.core.postfix_list import OptionalPostfixList, PostfixList
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply

__all__ = ["Action", "CheckSettings", "Checks", "Verdict", "content_reply"]

log = logging.getLogger(__name__)


class CheckSettings(BaseModel):
    """The tables and limits, as main.cf names them; a list names tables
    tried in order (the first that has an answer gives it)."""

    header_checks: PostfixList = Field(default_factory=list)
    mime_header_checks: OptionalPostfixList = None  # None: $header_checks
    nested_header_checks: OptionalPostfixList = None  # None: $header_checks
    body_checks: PostfixList = Field(default_factory=list)
    body_checks_size_limit: int = Field(default=51200, ge=0)


@dataclass(frozen=True, slots=True)
class Action:
    """One action taken, for the mail log: ``reject: header Subject: ...``."""

    word: str  # reject, warning, hold, ... (Postfix's log word)
    context: str  # header or body
    content: str  # what matched (at most 200 characters)
    text: str  # the action's text


@dataclass
class Verdict:
    """What the checks decided, and the message as they left it."""

    body: bytes
    reject: SmtpReply | None = None
    discard: bool = False
    hold: bool = False
    redirect: str = ""
    filter: str = ""
    actions: list[Action] = field(default_factory=list)

    @property
    def hold_reason(self) -> str:
        return next((f"{a.context} {a.content}" for a in self.actions if a.word == "hold"), "")


def content_reply(text: str) -> SmtpReply:
    """REJECT's reply: Postfix's dsn_prepend("5.7.1", text); a 4.x.x code defers."""
    if not text:
        return replies.CONTENT_REJECTED
    match = _DSN.match(text)
    status, rest = (match.group(1), text[match.end():]) if match else ("5.7.1", text)
    code = 451 if status.startswith("4") else 550
    return SmtpReply(code, status, rest.strip())


_DSN = re.compile(r"([45]\.\d{1,3}\.\d{1,3})(?:\s+|$)")


class _Tables:
    def __init__(self, tables: Sequence[PatternTable]) -> None:
        self.tables = tuple(tables)

    def __bool__(self) -> bool:
        return bool(self.tables)

    def lookup(self, text: str) -> str | None:
        for table in self.tables:
            found = table.lookup(text)
            if found is not None:
                return found
        return None


class Checks:
    """The configured tables, loaded once (a bad table stops the role)."""

    def __init__(self, settings: CheckSettings) -> None:
        def load(names: Sequence[str]) -> _Tables:
            return _Tables([load_table(n) for n in names])

        self.header = load(settings.header_checks)
        self.mime = (self.header if settings.mime_header_checks is None
                     else load(settings.mime_header_checks))
        self.nested = (self.header if settings.nested_header_checks is None
                       else load(settings.nested_header_checks))
        self.body = load(settings.body_checks)
        self.body_limit = settings.body_checks_size_limit

    def __bool__(self) -> bool:
        return bool(self.header or self.mime or self.nested or self.body)

    def run(self, message: bytes) -> Verdict:
        if not self:
            return Verdict(message)
        return _Walk(self, message).run()


# -- the walk --------------------------------------------------------------------

_HEADER = re.compile(rb"^[!-9;-~]+:")
_PRIMARY, _MULTIPART, _NESTED = "primary", "multipart", "nested"


def _lines(data: bytes) -> list[bytes]:
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")


def _raw(text: str, eol: bytes = b"\r\n") -> bytes:
    return text.encode("utf-8", "surrogateescape") + eol


def _eol(line: bytes) -> bytes:
    return b"\r\n" if line.endswith(b"\r\n") else b"\n" if line.endswith(b"\n") else b""


def _is_mime_header(name: str) -> bool:
    name = name.lower()
    return name.startswith("content-") or name == "mime-version"


_PARAM = re.compile(r';\s*([\w-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]+))')


def _content_type(headers: list[str]) -> tuple[str, str]:
    """(type/subtype lowercased, boundary) from a Content-Type header."""
    for header in headers:
        name, _, value = header.partition(":")
        if name.strip().lower() != "content-type":
            continue
        value = " ".join(value.split())
        kind = value.split(";", 1)[0].strip().lower()
        params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
                  for m in _PARAM.finditer(value)}
        return kind, params.get("boundary", "")
    return "text/plain", ""


class _Stop(Exception):
    """A final action: no more checks."""


class _Walk:
    def __init__(self, checks: Checks, message: bytes) -> None:
        self.checks = checks
        self.lines = _lines(message)
        self.i = 0
        self.out: list[bytes] = []
        self.boundaries: list[bytes] = []
        self.verdict = Verdict(message)

    def run(self) -> Verdict:
        try:
            self._entity(_PRIMARY)
            self._body(self.checks.body_limit)
        except _Stop:
            self.out.extend(self.lines[self.i:])
        self.verdict.body = b"".join(self.out)
        return self.verdict

    # -- structure -------------------------------------------------------------

    def _boundary(self, line: bytes) -> bool:
        stripped = line.rstrip()
        return any(stripped in (b"--" + b, b"--" + b + b"--") for b in self.boundaries)

    def _entity(self, klass: str) -> None:
        """One entity: its headers, then its body by content type."""
        headers = self._headers(klass)
        if self.i < len(self.lines) and self.lines[self.i].strip() == b"":
            self.out.append(self.lines[self.i])
            self.i += 1
        kind, boundary = _content_type(headers)
        if kind.startswith("multipart/") and boundary:
            self._multipart(boundary.encode("utf-8", "surrogateescape"))
        elif kind == "message/rfc822":
            self._entity(_NESTED)
        else:
            self._body(self.checks.body_limit)

    def _headers(self, klass: str) -> list[str]:
        """Read, check and write out one header block; the headers as kept."""
        kept: list[str] = []
        while self.i < len(self.lines):
            line = self.lines[self.i]
            if not _HEADER.match(line) or self._boundary(line):
                break
            raw = [line]
            self.i += 1
            while self.i < len(self.lines) and self.lines[self.i][:1] in (b" ", b"\t"):
                raw.append(self.lines[self.i])
                self.i += 1
            text = "\n".join(_text(r) for r in raw)
            name = text.split(":", 1)[0]
            table = (self.checks.mime if klass == _MULTIPART or _is_mime_header(name)
                     else self.checks.nested if klass == _NESTED else self.checks.header)
            prefix, result = self._check(table, text, "header", _eol(raw[-1]) or b"\r\n")
            self.out.append(prefix)
            if result is None:
                self.out.extend(raw)
                kept.append(text)
            elif result:
                self.out.append(result)
                kept.append(_text(result))
        return kept

    def _multipart(self, boundary: bytes) -> None:
        self.boundaries.append(boundary)
        self._body(self.checks.body_limit)  # the preamble
        while self.i < len(self.lines) and self._boundary(self.lines[self.i]):
            line = self.lines[self.i]
            closing = line.rstrip() == b"--" + boundary + b"--"
            mine = line.rstrip() in (b"--" + boundary, b"--" + boundary + b"--")
            if not mine:
                break  # an enclosing part's boundary
            self._body_line(line, None)
            self.i += 1
            if closing:
                self.boundaries.pop()
                return
            self._entity(_MULTIPART)
            self._body(self.checks.body_limit)  # a nested multipart's epilogue
        self.boundaries.pop()

    def _body(self, limit: int) -> None:
        """Body lines up to a boundary (or the end)."""
        budget = [limit]
        while self.i < len(self.lines) and not self._boundary(self.lines[self.i]):
            self._body_line(self.lines[self.i], budget)
            self.i += 1

    def _body_line(self, line: bytes, budget: list[int] | None) -> None:
        if budget is not None:
            if budget[0] <= 0 or not self.checks.body:
                self.out.append(line)
                return
            budget[0] -= len(line)
        prefix, result = self._check(self.checks.body, _text(line), "body", _eol(line))
        self.out.append(prefix)
        self.out.append(line if result is None else result)

    # -- actions ---------------------------------------------------------------

    def _check(
        self, table: _Tables, text: str, context: str, eol: bytes
    ) -> tuple[bytes, bytes | None]:
        """(a line to put before, the replacement): None keeps the line(s) as
        they are, b"" drops them."""
        keep: tuple[bytes, bytes | None] = (b"", None)
        if not table:
            return keep
        found = table.lookup(text)
        if found is None:
            return keep
        word, _, rest = found.strip().partition(" ")
        word, rest = word.upper(), rest.strip()
        verdict = self.verdict
        content = text.replace("\n", " ")[:200]

        def note(log_word: str) -> None:
            verdict.actions.append(Action(log_word, context, content, rest))

        if word == "REJECT":
            verdict.reject = content_reply(rest)
            verdict.actions.append(Action("reject", context, content, str(verdict.reject)[4:]))
            raise _Stop
        if word in ("DISCARD", "PASS"):
            verdict.discard = verdict.discard or word == "DISCARD"
            note(word.lower())
            raise _Stop
        if word == "REDIRECT":
            if "@" not in rest:
                log.warning("bad REDIRECT target %r -- need user@domain", rest)
                return keep
            verdict.redirect = rest
            note("redirect")
            raise _Stop
        if word == "HOLD":
            if not verdict.hold:
                verdict.hold = True
                note("hold")
            return keep
        if word == "FILTER":
            if ":" not in rest:
                log.warning("bad FILTER command %r -- need transport:destination", rest)
                return keep
            verdict.filter = rest
            note("filter")
            return keep
        if word in ("WARN", "INFO"):
            note("warning" if word == "WARN" else "info")
            return keep
        if word in ("IGNORE", "STRIP"):
            if word == "STRIP":
                note("strip")
            return b"", b""
        if word in ("PREPEND", "REPLACE"):
            if not rest or (context == "header" and not _HEADER.match(_raw(rest))):
                log.warning("bad %s text %r -- need \"headername: headervalue\"", word, rest)
                return keep
            note(word.lower())
            if word == "REPLACE":
                return b"", _raw(rest, eol or b"\r\n")
            return _raw(rest, eol or b"\r\n"), None
        if word in ("DUNNO", "OK"):
            return keep
        if word == "BCC":
            log.warning("BCC action not supported, ignored: %s", rest)
            return keep
        log.warning("unknown command in header/body checks: %s", found)
        return keep
