"""Retry timing for deferred mail, as Postfix's qmgr computes it.

Postfix (qmgr_active.c) sets a deferred message's next attempt to "now plus
the time the message has spent in the queue", clamped to
[minimal_backoff_time, maximal_backoff_time]: the wait roughly doubles with
each attempt, from 300s up to 4000s by default.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def next_attempt(
    now: datetime, arrived_at: datetime, minimal_backoff: float, maximal_backoff: float
) -> datetime:
    age = (now - arrived_at).total_seconds()
    delay = min(max(age, minimal_backoff), maximal_backoff)
    return now + timedelta(seconds=delay)
