"""ingress-smtp: the per-session command counts of Postfix's disconnect line.

    postfix/smtpd[pid]: disconnect from host[1.2.3.4] ehlo=1 mail=1 rcpt=1/2 data=1
        quit=1 commands=5/6

As smtpd.c's smtpd_format_cmd_stats: each command that was given appears
as ``name=successes``, with ``/total`` when some failed, in Postfix's
command-table order; commands nobody recognised count as ``unknown``; the
``commands=`` total always closes the line (``0/0`` when none came).

Postfix parameters: none.
"""

from __future__ import annotations

# smtpd.c's smtpd_cmd_table order; anything else is "unknown" (last).
ORDER = ("helo", "ehlo", "xclient", "xforward", "starttls", "auth", "mail", "rcpt", "data",
         "bdat", "rset", "noop", "vrfy", "etrn", "quit", "help")


class CommandCounts:
    def __init__(self) -> None:
        self.total: dict[str, int] = {}
        self.success: dict[str, int] = {}

    def count(self, command: str, ok: bool) -> None:
        name = command.lower() if command.lower() in ORDER else "unknown"
        self.total[name] = self.total.get(name, 0) + 1
        self.success[name] = self.success.get(name, 0) + (1 if ok else 0)

    def format(self) -> str:
        parts = []
        for name in (*ORDER, "unknown"):
            total = self.total.get(name, 0)
            if total:
                ok = self.success[name]
                parts.append(f"{name}={ok}" + (f"/{total}" if ok != total else ""))
        ok, total = sum(self.success.values()), sum(self.total.values())
        parts.append(f"commands={ok}" + (f"/{total}" if ok != total or not total else ""))
        return " ".join(parts)
