"""``postfleet queue``: mailq/postqueue/postsuper over qmgr's admin API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx


def default_api(var_dir: Path) -> str:
    """POSTFLEET_API, else what `postfleet run all` wrote in var/run.json."""
    if os.environ.get("POSTFLEET_API"):
        return os.environ["POSTFLEET_API"]
    state = var_dir / "run.json"
    if state.exists():
        return str(json.loads(state.read_text())["api"])
    raise SystemExit("no admin API known: start `postfleet run all`, or pass --api URL "
                     "(qmgr's HTTP port) or set POSTFLEET_API")


def call(api: str, method: str, path: str) -> Any:
    try:
        resp = httpx.request(method, f"{api.rstrip('/')}/api/v1/queue{path}", timeout=30)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach the admin API at {api}: {exc}; is qmgr running?") \
            from None
    if resp.status_code == 404:
        raise SystemExit(resp.json().get("detail", "not found"))
    resp.raise_for_status()
    return resp.json()


def mailq(messages: list[dict[str, Any]]) -> str:
    """Postfix's mailq layout."""
    if not messages:
        return "Mail queue is empty"
    lines = ["-Queue ID-      --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    for m in messages:
        mark = "!" if m["state"] == "hold" else ("*" if m["state"] == "active" else " ")
        lines.append(f"{m['queue_id']}{mark} {m['size']:>8} {m['arrived_at'][:19]:20} "
                     f"{m['sender'] or 'MAILER-DAEMON'}")
        for r in m["recipients"]:
            if r["reason"]:
                lines.append(f"{'':16}({r['reason']})")
            lines.append(f"{'':40}{r['address']}")
        lines.append("")
    total = sum(len(m["recipients"]) for m in messages)
    lines.append(f"-- {sum(m['size'] for m in messages) // 1024} Kbytes in "
                 f"{len(messages)} Requests, {total} Recipients.")
    return "\n".join(lines)
