"""Queue ids: short, sortable and unique across replicas.

Like Postfix's long queue ids (enable_long_queue_ids): the arrival time in
microseconds, base-52 encoded so ids sort by arrival, followed by random
characters so two replicas (or two processes) never collide.
"""

from __future__ import annotations

import secrets
import time

# Postfix's long-id alphabet: no vowels-based ambiguity concerns here, just
# sortable ASCII (digits < upper < lower).
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjkmnpqrstvwxyz"
_BASE = len(_ALPHABET)
_TIME_WIDTH = 10  # covers microsecond timestamps for centuries


def _encode(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, _BASE)
        out.append(_ALPHABET[digit])
    return "".join(reversed(out))


def new_queue_id(now: float | None = None) -> str:
    """Return a 15-character id: 10 time characters and 5 random ones."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    rand = "".join(secrets.choice(_ALPHABET) for _ in range(5))
    return _encode(micros, _TIME_WIDTH) + rand
