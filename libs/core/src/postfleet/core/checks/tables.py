"""Postfix's pattern tables: ``regexp:`` (regexp_table(5)) and ``pcre:``
(pcre_table(5)) files, as header_checks, body_checks and friends name them.

A table is a list of rules, tried in order; the first that matches gives
the result, with ``$1``/``${1}``/``$(1)`` replaced by the match's groups
(``$$`` is a dollar)::

    # comment
    /^Subject:.*viagra/     REJECT no thanks
    !/^From:/               WARN no From header? (never: a negated rule has no groups)
    if /^Received:/
    /from .*\\.example$/    PREPEND X-Seen: example relay
    endif

``/pattern/flags`` may use any delimiter character; a line starting with
white space continues the previous one. Flags: ``i`` toggles case
insensitivity (on by default), ``m`` multi-line mode, ``s`` dot-matches-all
and ``x`` extended syntax (pcre: only; regexp:'s ``x`` toggles POSIX
extended syntax and is accepted as a no-op). Both kinds are compiled with
Python's ``re``, whose syntax covers POSIX extended expressions and the
PCRE subset these tables use.

Why hand-written: no kept library reads Postfix's table syntax (the
delimiters, flags, ``if``/``endif`` blocks and ``$n`` substitution).

Postfix parameters: none (the tables header_checks, mime_header_checks,
nested_header_checks and body_checks name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PatternTable", "TableError", "load_table", "parse_table"]

KINDS = ("regexp", "pcre")


class TableError(ValueError):
    """A table that cannot be read or has a bad line (named with its number)."""


@dataclass(frozen=True)
class _Rule:
    pattern: re.Pattern[str]
    negated: bool
    result: str | None  # None: an ``if`` opening a block
    block: tuple[_Rule, ...] = ()


@dataclass(frozen=True)
class PatternTable:
    """A compiled table; ``name`` is how it was named (``regexp:/path``)."""

    name: str
    rules: tuple[_Rule, ...] = field(default_factory=tuple)

    def lookup(self, text: str) -> str | None:
        """The result of the first rule that matches ``text``, or None."""
        return _first(self.rules, text)


def _first(rules: tuple[_Rule, ...], text: str) -> str | None:
    for rule in rules:
        match = rule.pattern.search(text)
        if rule.negated == (match is not None):
            continue
        if rule.result is None:
            found = _first(rule.block, text)
            if found is not None:
                return found
            continue
        return rule.result if match is None else _substitute(rule.result, match)
    return None


_GROUP = re.compile(r"\$(?:\$|(\d+)|\{(\d+)\}|\((\d+)\))")


def _substitute(result: str, match: re.Match[str]) -> str:
    def group(ref: re.Match[str]) -> str:
        if ref.group(0) == "$$":
            return "$"
        number = int(next(g for g in ref.groups() if g is not None))
        if number > (match.re.groups or 0):
            return ""
        return match.group(number) or ""

    return _GROUP.sub(group, result)


def load_table(spec: str) -> PatternTable:
    """``regexp:/path`` or ``pcre:/path`` read and compiled."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise TableError(f"{spec}: need regexp:/path or pcre:/path")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TableError(f"{spec}: {exc.strerror or exc}") from None
    return parse_table(text, name=spec)


def parse_table(text: str, name: str = "regexp:inline") -> PatternTable:
    kind = name.partition(":")[0]
    lines = _logical_lines(text)
    stack: list[tuple[_Rule | None, list[_Rule], int]] = [(None, [], 0)]
    for number, line in lines:
        where = f"{name}, line {number}"
        if re.match(r"endif\b", line, re.I):
            if len(stack) == 1:
                raise TableError(f"{where}: ignoring ENDIF without matching IF")
            opener, body, _ = stack.pop()
            assert opener is not None
            stack[-1][1].append(_Rule(opener.pattern, opener.negated, None, tuple(body)))
            continue
        is_if = re.match(r"if\s+", line, re.I)
        pattern_text = line[is_if.end():] if is_if else line
        pattern, negated, rest = _pattern(pattern_text, kind, where)
        if is_if:
            if rest:
                raise TableError(f"{where}: text after IF pattern: {rest}")
            stack.append((_Rule(pattern, negated, None), [], number))
            continue
        if not rest:
            raise TableError(f"{where}: no result after the pattern")
        stack[-1][1].append(_Rule(pattern, negated, rest))
    if len(stack) > 1:
        raise TableError(f"{name}, line {stack[-1][2]}: IF has no matching ENDIF")
    return PatternTable(name, tuple(stack[0][1]))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) per rule; white space at the start continues."""
    out: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[:1].isspace() and out:
            out[-1] = (out[-1][0], f"{out[-1][1]} {raw.strip()}")
        else:
            out.append((number, raw.strip()))
    return out


def _pattern(text: str, kind: str, where: str) -> tuple[re.Pattern[str], bool, str]:
    """The compiled ``/pattern/flags`` at the start of ``text``, whether it is
    negated (``!``), and the rest of the line (the result)."""
    negated = text.startswith("!")
    if negated:
        text = text[1:].lstrip()
    if not text or text[0].isspace() or text[0].isalnum():
        raise TableError(f"{where}: need /pattern/")
    delimiter = text[0]
    end = _closing(text, delimiter)
    if end < 0:
        raise TableError(f"{where}: missing closing {delimiter} of the pattern")
    body = text[1:end]
    flag_end = end + 1
    while flag_end < len(text) and not text[flag_end].isspace():
        flag_end += 1
    flags = _flags(text[end + 1:flag_end], kind, where)
    try:
        pattern = re.compile(body, flags)
    except re.error as exc:
        raise TableError(f"{where}: bad pattern {body!r}: {exc}") from None
    return pattern, negated, text[flag_end:].strip()


def _closing(text: str, delimiter: str) -> int:
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == delimiter:
            return i
        i += 1
    return -1


def _flags(letters: str, kind: str, where: str) -> re.RegexFlag:
    flags = re.IGNORECASE
    toggles = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
    if kind == "pcre":
        toggles["x"] = re.VERBOSE
    for letter in letters:
        if letter in toggles:
            flags ^= toggles[letter]
        elif letter in ("x", "A", "E", "U", "X"):
            continue  # regexp: x (POSIX extended, always on); pcre: anchoring/greed hints
        else:
            raise TableError(f"{where}: unknown flag {letter!r}")
    return flags
