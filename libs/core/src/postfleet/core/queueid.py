"""Queue ids: short, sortable and unique across replicas.

Like Postfix's long queue ids (enable_long_queue_ids): the arrival time in
microseconds, base-52 encoded so ids sort by arrival, followed by random
characters so two replicas (or two processes) never collide.

smtpd asks cleanup for the id it logs its ``client=`` line with (the gRPC
metadata ``QUEUE_ID_METADATA``), so that line comes before anything qmgr
logs of the message, as in Postfix; cleanup takes it when ``is_queue_id``.
"""

from __future__ import annotations

import secrets
import time

# Postfix's long-id alphabet: no vowels-based ambiguity concerns here, just
# sortable ASCII (digits < upper < lower).
_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjkmnpqrstvwxyz"
_BASE = len(_ALPHABET)
_TIME_WIDTH = 10  # covers microsecond timestamps for centuries
QUEUE_ID_METADATA = "postfleet-queue-id"
# smtpd sends a message again under the same id after cleanup's answer was
# lost; cleanup answers with the id if the first call had committed it.
RESEND_METADATA = "postfleet-resend"


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


def is_queue_id(text: str) -> bool:
    """A queue id as new_queue_id makes them (15 characters of the alphabet)."""
    return len(text) == _TIME_WIDTH + 5 and all(c in _ALPHABET for c in text)
