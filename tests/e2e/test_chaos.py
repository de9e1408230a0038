"""The short chaos run (issue 8; the full one is `make chaos`): `postfleet
run all` on its embedded defaults takes a tagged load while random role
processes are killed with kill -9; nothing accepted is lost, every client
gets its mail accepted, the queue drains, duplicates stay rare."""

from __future__ import annotations

from pathlib import Path

import pytest

from postfleet.core.testing.chaos import ChaosPlan, run_all_chaos
from postfleet.core.testing.load import tally

pytestmark = pytest.mark.slow


async def test_kill_9_at_random_under_load_loses_nothing(tmp_path: Path) -> None:
    plan = ChaosPlan(messages=300, rate=30, sessions=10, every=1.5, kills=8,
                     drain_timeout=120)
    result = await run_all_chaos(plan, tmp_path)
    counted = tally(result.report, result.arrived)
    print(result.summary(plan.messages))
    assert len(result.kills) == plan.kills
    assert result.report.gave_up == [] and result.report.refused == []
    assert counted.accepted == plan.messages
    assert counted.lost == []
    assert result.drain_s is not None  # everything accepted arrived within drain_timeout
    assert counted.duplicates <= 3  # 1 %: a reply lost with its smtpd or cleanup
