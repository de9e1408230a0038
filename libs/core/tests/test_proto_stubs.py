"""The committed gRPC/protobuf stubs are exactly what proto/ generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "libs" / "core" / "src" / "postfleet" / "core" / "proto"


@pytest.mark.slow
def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    gen = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )
    assert gen.returncode == 0, gen.stdout + gen.stderr
    fresh = tmp_path / "postfleet" / "core" / "proto"
    names = sorted(p.relative_to(fresh) for p in fresh.rglob("*.py*"))
    assert names == sorted(p.relative_to(COMMITTED) for p in COMMITTED.rglob("*.py*")
                           if "__pycache__" not in p.parts)
    stale = [str(n) for n in names if (fresh / n).read_bytes() != (COMMITTED / n).read_bytes()]
    assert not stale, f"stale generated stubs (run `make proto`): {stale}"
