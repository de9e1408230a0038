"""Postfix lookup tables (dict_open's ``type:name``) for the tables smtpd reads
at run time: access maps (check_client_access, check_sender_access, ...),
smtpd_sender_login_maps.

Types, as Postfix reads them:

- ``inline:{ key=value, { key = value with spaces } }`` -- the table is the
  parameter's own text (Postfix 3.0);
- ``hash:/path``, ``btree:``, ``lmdb:``, ``cdb:``, ``dbm:``, ``texthash:`` --
  the postmap(1) *source* file (``key value`` lines, ``#`` comments, a line
  starting with white space continues the previous one): postfleet has no
  indexed files, so it reads the text postmap would have compiled, and
  re-reads it when it changes on disk (a mounted ConfigMap or Secret);
- ``regexp:/path`` and ``pcre:/path`` -- ``/pattern/flags result`` lines
  (``!/pattern/`` negates; flags ``i`` toggles case folding, on by default;
  ``$1``/``${1}`` in the result are the match's groups), first match wins; both
  use Python's ``re``, whose syntax is close to PCRE (``regexp:``'s POSIX
  classes such as ``[[:digit:]]`` are not understood); ``if``/``endif``
  blocks are refused at load time;
- ``cidr:/path`` -- ``network/prefix result`` lines (a bare address is a /32 or
  /128), first match wins (Postfix 2.2's cidr_table(5)).

Lookups follow dict flags: keys of the text tables are folded to lower
case (postmap does so), and a *partial* key (a parent domain, a shorter
network, ``user@``) is only tried on the text tables -- pattern tables
(regexp, pcre, cidr) answer the full query only (DICT_FLAG_FIXED / PATTERN).

Postfix parameters: none (each caller names its own: check_*_access
arguments, smtpd_sender_login_maps).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# postmap's indexed types: here they all read the source text file.
TEXT_TYPES = frozenset({"hash", "btree", "lmdb", "cdb", "dbm", "sdbm", "texthash"})
PATTERN_TYPES = frozenset({"regexp", "pcre", "cidr"})
KNOWN_TYPES = TEXT_TYPES | PATTERN_TYPES | {"inline", "static"}


def parse_table(text: str, fmt: str = "postmap") -> dict[str, str]:
    """A postmap(1) / postalias(1) source: ``key value`` or ``name: value``."""
    entries: dict[str, str] = {}
    logical: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[0].isspace() and logical:
            logical[-1] += " " + stripped
        else:
            logical.append(stripped)
    for line in logical:
        if fmt == "aliases":
            key, _, value = line.partition(":")
        else:
            parts = line.split(None, 1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
        key = key.strip().lower()
        if key and key not in entries:  # postmap keeps the first of duplicates
            entries[key] = value.strip()
    return entries


class Table(Protocol):
    spec: str

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        """The value for ``key``; None when absent (or a partial key on a pattern table)."""


def _split_inline(body: str) -> list[str]:
    """inline:{...}'s entries: separated by commas/white space, ``{...}`` groups one."""
    entries: list[str] = []
    i, n = 0, len(body)
    while i < n:
        ch = body[i]
        if ch in ", \t\r\n":
            i += 1
        elif ch == "{":
            end = body.find("}", i)
            if end < 0:
                raise ValueError(f"inline table: unbalanced '{{' in {body!r}")
            entries.append(body[i + 1:end].strip())
            i = end + 1
        else:
            end = i
            while end < n and body[end] not in ", \t\r\n":
                end += 1
            entries.append(body[i:end])
            i = end
    return entries


@dataclass
class InlineTable:
    spec: str
    entries: dict[str, str]

    @classmethod
    def parse(cls, spec: str, body: str) -> InlineTable:
        entries: dict[str, str] = {}
        for entry in _split_inline(body):
            key, eq, value = entry.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"{spec}: entry {entry!r} is not key=value")
            entries.setdefault(key.strip().lower(), value.strip())
        return cls(spec, entries)

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        return self.entries.get(key.lower())


@dataclass
class StaticTable:
    """``static:value``: every key finds ``value``."""

    spec: str
    value: str

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        return self.value


class _FileTable:
    """A table read from a file, re-read when the file changes."""

    def __init__(self, spec: str, path: str) -> None:
        self.spec = spec
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._reload()

    def _read(self, text: str) -> None:
        raise NotImplementedError

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            text = Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{self.spec}: cannot read {self.path}: {exc.strerror}") from None
        self._read(text)
        self._stamp = stamp


class TextTable(_FileTable):
    def _read(self, text: str) -> None:
        self.entries = parse_table(text)

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        self._reload()
        return self.entries.get(key.lower())


_REGEXP_LINE = re.compile(r"^(!?)/(.*)/([a-zA-Z]*)\s+(.*)$")
_GROUP = re.compile(r"\$(?:\{(\d+)\}|(\d+))")


class RegexpTable(_FileTable):
    def _read(self, text: str) -> None:
        rules: list[tuple[bool, re.Pattern[str], str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.split(None, 1)[0].lower() in ("if", "endif"):
                raise ValueError(f"{self.spec}, line {number}: if/endif is not supported")
            found = _REGEXP_LINE.match(line)
            if not found:
                raise ValueError(f"{self.spec}, line {number}: expected /pattern/ result")
            negated, pattern, flags, result = found.groups()
            re_flags = re.IGNORECASE
            for flag in flags:
                if flag == "i":
                    re_flags ^= re.IGNORECASE
                elif flag == "x":
                    re_flags |= re.VERBOSE
                elif flag not in "m":
                    raise ValueError(f"{self.spec}, line {number}: unknown flag {flag!r}")
            try:
                rules.append((bool(negated), re.compile(pattern, re_flags), result.strip()))
            except re.error as exc:
                raise ValueError(f"{self.spec}, line {number}: {exc}") from None
        self.rules = rules

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        if partial:
            return None
        self._reload()
        for negated, pattern, result in self.rules:
            found = pattern.search(key)
            if negated and found is None:
                return result
            if not negated and found is not None:
                return _GROUP.sub(functools.partial(_group, found), result)
        return None


def _group(found: re.Match[str], ref: re.Match[str]) -> str:
    """``$N`` in a regexp table's result: the match's group N ("" when none)."""
    number = int(ref.group(1) or ref.group(2))
    return (found.group(number) or "") if number <= found.re.groups else ""


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CidrTable(_FileTable):
    def _read(self, text: str) -> None:
        rules: list[tuple[_Network, str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            try:
                network = ipaddress.ip_network(parts[0].strip("[]").replace("]/", "/"),
                                               strict=False)
            except ValueError:
                raise ValueError(
                    f"{self.spec}, line {number}: bad network {parts[0]!r}") from None
            rules.append((network, parts[1].strip() if len(parts) > 1 else ""))
        self.rules = rules

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        if partial:
            return None
        self._reload()
        try:
            address = ipaddress.ip_address(key.strip("[]"))
        except ValueError:
            return None
        for network, result in self.rules:
            if address.version == network.version and address in network:
                return result
        return None


def open_table(spec: str) -> Table:
    """``type:name`` -> a table; ValueError naming what is wrong (type, file, syntax)."""
    kind, colon, name = spec.partition(":")
    kind = kind.lower()
    if not colon or not name:
        raise ValueError(f"{spec!r} is not a lookup table (type:name)")
    if kind == "inline":
        if not (name.startswith("{") and name.endswith("}")):
            raise ValueError(f"{spec}: inline tables are written inline:{{ key=value, ... }}")
        return InlineTable.parse(spec, name[1:-1])
    if kind == "static":
        return StaticTable(spec, name.strip("{}").strip())
    if kind in TEXT_TYPES:
        return TextTable(spec, name)
    if kind in ("regexp", "pcre"):
        return RegexpTable(spec, name)
    if kind == "cidr":
        return CidrTable(spec, name)
    raise ValueError(f"{spec}: unsupported table type {kind!r} "
                     f"(supported: {', '.join(sorted(KNOWN_TYPES))})")


class Maps:
    """Several tables searched in order, like Postfix's ``maps`` (first found wins)."""

    def __init__(self, specs: Sequence[str]) -> None:
        self.tables = [open_table(spec) for spec in specs]

    def lookup(self, key: str, *, partial: bool = False) -> str | None:
        for table in self.tables:
            value = table.lookup(key, partial=partial)
            if value is not None:
                return value
        return None

    def __bool__(self) -> bool:
        return bool(self.tables)
