"""``postfleet queue``: mailq/postqueue/postsuper over qmgr's admin API.

    list            postqueue -p (mailq): showq's layout, long queue ids
    list --json     postqueue -j: one JSON object per message and line, with
                    Postfix's field names (queue_name, queue_id, arrival_time,
                    message_size, forced_expire, sender, recipients:
                    orig_address, address, delay_reason)
    flush [ID]      postqueue -f / -i;  flush --site DOMAIN: postqueue -s
    hold|release|requeue|delete ID... | ALL [QUEUE]
                    postsuper -h / -H / -r / -d, narrowed by --sender and
                    --recipient-domain (either alone means ALL)

Postfix parameters: none (empty_address_recipient's MAILER-DAEMON is how
showq prints the null sender).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

QUEUE_NAMES = ("incoming", "active", "deferred", "hold")
MAILER_DAEMON = "MAILER-DAEMON"
# postsuper's summary words, by action.
SUMMARY = {"delete": "Deleted", "hold": "Placed on hold", "release": "Released from hold",
           "requeue": "Requeued"}


def default_api(var_dir: Path) -> str:
    """POSTFLEET_API, else what `postfleet run all` wrote in var/run.json."""
    if os.environ.get("POSTFLEET_API"):
        return os.environ["POSTFLEET_API"]
    state = var_dir / "run.json"
    if state.exists():
        return str(json.loads(state.read_text())["api"])
    raise SystemExit("no admin API known: start `postfleet run all`, or pass --api URL "
                     "(qmgr's HTTP port) or set POSTFLEET_API")


def call(api: str, method: str, path: str, *, params: dict[str, Any] | None = None,
         body: dict[str, Any] | None = None) -> Any:
    try:
        resp = httpx.request(method, f"{api.rstrip('/')}/api/v1/queue{path}", timeout=30,
                             params={k: v for k, v in (params or {}).items() if v is not None},
                             json=body)
    except httpx.HTTPError as exc:
        raise SystemExit(f"cannot reach the admin API at {api}: {exc}; is qmgr running?") \
            from None
    if resp.status_code in (404, 422):
        detail = resp.json().get("detail", "not found")
        raise SystemExit(detail if isinstance(detail, str) else json.dumps(detail))
    resp.raise_for_status()
    return resp.json()


def _sender(address: str) -> str:
    return address or MAILER_DAEMON


def _epoch(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def mailq(messages: list[dict[str, Any]]) -> str:
    """postqueue -p, as showq_compat.c prints it with long queue ids."""
    if not messages:
        return "Mail queue is empty"
    row = "{:<17} {:>8} {:<19} {}"
    out = []
    for i, m in enumerate(messages):
        out.append("" if i else row.format("----Queue ID-----", "--Size--",
                                           "---Arrival Time----",
                                           "--Sender/Recipient------"))
        mark = {"active": "*", "hold": "!"}.get(m["state"], "")
        arrival = time.asctime(time.localtime(_epoch(m["arrived_at"])))[:19]
        out.append(row.format(m["queue_id"] + mark, m["size"], arrival, _sender(m["sender"])))
        shown = ""
        for r in m["recipients"]:
            if r["reason"] != shown:  # a reason line only when it changes
                shown = r["reason"]
                why = shown or "reason unavailable"
                out.append(" " * max(0, 76 - len(why)) + f"({why})")
            out.append(row.format("", "", "", r["address"]))
    total = sum(m["size"] for m in messages)
    count = len(messages)
    out.append(f"\n-- {total // 1024} Kbytes in {count} Request{'' if count == 1 else 's'}.")
    return "\n".join(out)


def showq_json(messages: list[dict[str, Any]]) -> str:
    """postqueue -j: one object per line, showq_json.c's fields and order."""
    lines = []
    for m in messages:
        rcpts = []
        for r in m["recipients"]:
            rcpt = {"orig_address": r["orig_address"], "address": r["address"]}
            if r["reason"]:
                rcpt["delay_reason"] = r["reason"]
            rcpts.append(rcpt)
        lines.append(json.dumps({
            "queue_name": m["state"], "queue_id": m["queue_id"],
            "arrival_time": _epoch(m["arrived_at"]), "message_size": m["size"],
            "forced_expire": False, "sender": _sender(m["sender"]), "recipients": rcpts,
        }))
    return "\n".join(lines)


def selection(operands: list[str], sender: str | None,
              recipient_domain: str | None) -> dict[str, Any]:
    """postsuper's operands: queue ids, or ALL with an optional queue name."""
    body: dict[str, Any] = {"sender": _null(sender), "recipient_domain": recipient_domain}
    if operands[:1] == ["ALL"]:
        if len(operands) > 2 or (len(operands) == 2 and operands[1] not in QUEUE_NAMES):
            raise SystemExit(f"ALL takes at most one queue name ({', '.join(QUEUE_NAMES)})")
        body.update(all=True, state=operands[1] if len(operands) == 2 else None)
    elif operands:
        body["queue_ids"] = operands
    elif sender is not None or recipient_domain is not None:
        body["all"] = True
    else:
        raise SystemExit("which messages? give queue ids, ALL [QUEUE], --sender or "
                         "--recipient-domain")
    return {k: v for k, v in body.items() if v is not None}


def _null(sender: str | None) -> str | None:
    """The null sender as an operand: "", "<>" or MAILER-DAEMON."""
    if sender is None:
        return None
    return "" if sender in ("<>", MAILER_DAEMON) else sender.strip("<>")


def queue_command(args: Any) -> int:
    api = args.api or default_api(args.var_dir)
    action, operands = args.action, args.operands
    if action == "list":
        listing = call(api, "GET", "", params={
            "state": args.state, "sender": _null(args.sender),
            "recipient_domain": args.recipient_domain})
        print(showq_json(listing) if args.json else mailq(listing))
        return 0
    if action == "show":
        if len(operands) != 1:
            raise SystemExit("`postfleet queue show` takes one queue id")
        print(json.dumps(call(api, "GET", f"/{operands[0]}"), indent=2))
        return 0
    if action == "flush" and not operands and args.sender is None and \
            args.recipient_domain is None:
        out = call(api, "POST", "/flush", params={"site": args.site})
    elif args.site:
        raise SystemExit("--site goes with flush alone (postqueue -s SITE)")
    else:
        out = call(api, "POST", f"/select/{action}",
                   body=selection(operands, args.sender, args.recipient_domain))
    if args.json:
        print(json.dumps(out, indent=2))
    elif action in SUMMARY and out["messages"]:
        n = out["messages"]
        print(f"postfleet queue: {SUMMARY[action]}: {n} message{'' if n == 1 else 's'}",
              file=sys.stderr)
    return 0
