"""What a failed queue-store write means for the client.

A full disk (SQLite's SQLITE_FULL, "database or disk is full"; PostgreSQL's
SQLSTATE 53100 disk_full, or an ENOSPC underneath) is not a broken queue:
smtpd answers Postfix's ``452 4.3.1 Insufficient system storage`` and
accepts again once space returns. Everything else is a queue file write
error (451 4.3.0).

Postfix parameters: none (smtpd's reply when the queue has no room).
"""

from __future__ import annotations

import errno


def storage_full(exc: BaseException) -> bool:
    """True when ``exc`` (or what it wraps) says the storage is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _says_full(current):
            return True
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _says_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    if getattr(exc, "sqlstate", None) == "53100" or getattr(exc, "pgcode", None) == "53100":
        return True
    text = str(exc).lower()
    return "database or disk is full" in text or "no space left on device" in text
