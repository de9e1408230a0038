"""Structured logging for every role: JSON lines carrying queue id and trace id.

``log.info("...", extra={"queue_id": qid, "trace_id": tid})`` puts both on the
line. The Postfix-format mail log (see ``maillog``) goes through the same
handlers so one stream holds both.

A role logs several lines per message (smtpd's connect and disconnect,
qmgr's from= and removed, smtp's status=), so a line's cost counts: the
formatter reuses the timestamp's seconds, and ``setup_logging`` turns off
what no line of ours shows (the caller's file and line, which logging finds
by walking the stack; thread and process names) -- the logging HOWTO's
"Optimization" switches. Together about a third of a line's CPU.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_EXTRA_KEYS = ("queue_id", "trace_id", "role")


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        self._second = -1  # the second _stamp spells
        self._stamp = ""

    def _timestamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self._timestamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "role": self.role,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        attrs = record.__dict__  # extra= lands here; no AttributeError to raise and catch
        for key in _EXTRA_KEYS:
            value = attrs.get(key)
            if value:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(role: str, fmt: str = "json", level: str = "INFO") -> None:
    # No line shows the caller's file/line or the thread and process names.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {role} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "uvicorn.access", "mail.log"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
