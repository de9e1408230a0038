"""The README's quickstart configuration says what the README says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Starts processes (see the slow marker in pyproject.toml).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def test_quickstart_relays_example_test_to_the_local_sink_and_nothing_else() -> None:
    out = subprocess.run(
        [POSTFLEET, "route", "--json", "--config",
         str(ROOT / "examples" / "quickstart" / "postfleet.yaml"),
         "someone@example.test", "someone@elsewhere.test"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    inside, outside = (json.loads(line) for line in out)
    assert (inside["class"], inside["transport"], inside["nexthop"], inside["port"],
            inside["mx"], inside["reject"]) == ("relay", "smtp", "127.0.0.1", 2526, False, None)
    assert outside["reject"] == "554 5.7.1 <someone@elsewhere.test>: Relay access denied"
