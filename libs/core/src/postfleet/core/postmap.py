"""Postfix lookup tables as text: postmap(1) / postalias(1) sources, and the
``type:name`` table specifications that name them.

One parser for the source format (``key value`` lines, continuation lines
that start with white space, ``#`` comments, keys folded to lower case, the
first of duplicate keys kept, as postmap does), used by ``postfleet
import-postfix`` and by the roles that read a table file at run time (the
smtp client's smtp_sasl_password_maps).

Table types read here: ``texthash:/path`` and the indexed types (``hash:``,
``btree:``, ``lmdb:``, ``cdb:``, ``dbm:``, ``sdbm:``), whose source file
``/path`` is read as postmap would read it (no ``.db`` is ever opened), and
``inline:{ key=value, key2=value2 }``.

Postfix parameters: none of its own (the callers name theirs).
"""

from __future__ import annotations

from pathlib import Path

from postfleet.core.dicts import parse_table

__all__ = ["INDEXED_TYPES", "TableError", "parse_inline", "parse_table", "read_table",
           "table_path"]

INDEXED_TYPES = frozenset({"hash", "btree", "texthash", "lmdb", "cdb", "dbm", "sdbm"})


class TableError(ValueError):
    """A table specification that cannot be read."""


def parse_inline(body: str) -> dict[str, str]:
    """``{ key=value, key2=value2 }`` (Postfix 3.0 inline: tables)."""
    text = body.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise TableError(f"inline table {body!r} must be enclosed in {{}}")
    entries: dict[str, str] = {}
    for item in text[1:-1].split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TableError(f"inline table entry {item.strip()!r} is not key=value")
        entries.setdefault(key.strip().lower(), value.strip())
    return entries


def table_path(spec: str) -> Path | None:
    """The file behind ``type:/path`` (None for an inline table)."""
    kind, sep, name = spec.strip().partition(":")
    if not sep:
        raise TableError(f"table {spec!r} is not type:name")
    kind = kind.lower()
    if kind == "inline":
        return None
    if kind not in INDEXED_TYPES:
        raise TableError(f"table type {kind!r} is not supported (use texthash:, hash: or inline:)")
    return Path(name)


def read_table(spec: str) -> dict[str, str]:
    """The entries of ``type:name``; TableError when it cannot be read."""
    path = table_path(spec)
    if path is None:
        return parse_inline(spec.strip().partition(":")[2])
    try:
        return parse_table(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TableError(f"{spec}: {exc.strerror or exc}") from None
