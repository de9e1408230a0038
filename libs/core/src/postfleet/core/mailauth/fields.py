"""The header block of a message as raw fields, byte for byte: what the
signer and the checks read and edit without re-folding anything (the email
package would re-encode and re-fold, which breaks signatures).

Postfix parameters: none.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from email.utils import getaddresses

_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def split(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its continuation lines and line end; the
    rest: the blank line and the body)."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(message):
        nl = message.find(b"\n", pos)
        end = len(message) if nl < 0 else nl + 1
        line = message[pos:end]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _NAME.match(line):
            fields.append(line)
        else:
            break
        pos = end
    return fields, message[pos:]


def name(field: bytes) -> str:
    match = _NAME.match(field)
    return match.group(1).decode("ascii").lower() if match else ""


def value(field: bytes) -> str:
    """The field's value, unfolded and stripped."""
    raw = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r?\n(?=[ \t])", "", raw.decode("utf-8", "replace")).strip()


def values(message: bytes, wanted: str) -> list[str]:
    fields, _ = split(message)
    return [value(f) for f in fields if name(f) == wanted]


def without(message: bytes, drop: Callable[[bytes], bool]) -> bytes:
    """The message without the header fields for which ``drop(field)`` is true."""
    fields, rest = split(message)
    return b"".join(f for f in fields if not drop(f)) + rest


def prepend(message: bytes, *added: bytes) -> bytes:
    """The message with these complete header fields on top."""
    return b"".join(f if f.endswith(b"\n") else f + b"\r\n" for f in added) + message


def from_domain(message: bytes) -> str | None:
    """The domain of the one author address in From: (RFC 7489 6.6.1);
    None when there is no From:, more than one, or no domain."""
    froms = values(message, "from")
    if len(froms) != 1:
        return None
    addresses = [a for _, a in getaddresses(froms) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    return addresses[0].rpartition("@")[2].lower().rstrip(".") or None
