"""Postfix's backoff: the message's age, clamped to [minimal, maximal]."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postfleet.qmgr.backoff import next_attempt

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_young_messages_wait_the_minimal_backoff() -> None:
    assert next_attempt(NOW, NOW - timedelta(seconds=10), 300, 4000) == NOW + timedelta(
        seconds=300)


def test_the_wait_grows_with_age_then_caps_at_the_maximal_backoff() -> None:
    assert next_attempt(NOW, NOW - timedelta(seconds=1000), 300, 4000) == NOW + timedelta(
        seconds=1000)
    assert next_attempt(NOW, NOW - timedelta(days=2), 300, 4000) == NOW + timedelta(
        seconds=4000)
