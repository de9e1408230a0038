"""Postfix-format mail log lines, so pflogsumm and existing tooling keep working.

    postfix/smtpd[1234]: 3F2A1...: client=host[1.2.3.4]
    postfix/smtp[1240]: 3F2A1...: to=<a@b>, relay=h[1.2.3.4]:25, delay=0.4,
        dsn=2.0.0, status=sent (250 2.0.0 Ok)

``program`` is the Postfix daemon each role stands for (smtpd, cleanup, qmgr,
smtp, lmtp, local, bounce). A line about a session rather than a message
(``Verified TLS connection established to …``) has no queue id, as in Postfix.

Every line goes to the role's JSON stream (logger ``postfleet.maillog``)
and, when ``maillog_file`` is set, to that file in syslog's format
(``Mon DD HH:MM:SS host postfix/smtpd[pid]: …``) as Postfix 3.4's postlog
writes it: what pflogsumm and other log readers take as they are. Several
processes may share one file (``postfleet run all``): each line is one
``write`` on a descriptor opened with ``O_APPEND``, so lines never interleave.

Postfix parameters: syslog_name (the program prefix, ``postfix`` as in
Postfix), maillog_file (empty: no file), myhostname (the host field).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

log = logging.getLogger("postfleet.maillog")

DEFAULT_SYSLOG_NAME = "postfix"
_syslog_name = DEFAULT_SYSLOG_NAME


def maillog(program: str, queue_id: str, text: str) -> None:
    if not queue_id:
        log.info("%s/%s[%d]: %s", _syslog_name, program, os.getpid(), text)
        return
    log.info(
        "%s/%s[%d]: %s: %s", _syslog_name, program, os.getpid(), queue_id, text,
        extra={"queue_id": queue_id},
    )


def maillog_event(program: str, text: str, *, level: int = logging.INFO) -> None:
    """A line that belongs to no queue file: ``postfix/smtpd[pid]: text``
    (TLS sessions, SASL failures, anvil limits; warnings start "warning: ")."""
    log.log(level, "%s/%s[%d]: %s", _syslog_name, program, os.getpid(), text)


def delivery_line(
    *, address: str, orig: str = "", relay: str, delay: float, dsn: str, status: str,
    reply: str,
) -> str:
    orig_part = f", orig_to=<{orig}>" if orig and orig != address else ""
    return (
        f"to=<{address}>{orig_part}, relay={relay}, delay={delay:.2g}, dsn={dsn}, "
        f"status={status} ({reply})"
    )


class SyslogFileHandler(logging.Handler):
    """maillog_file: syslog-format lines appended to one file by any number
    of processes (one ``os.write`` per line on an ``O_APPEND`` descriptor)."""

    def __init__(self, path: str, hostname: str) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.hostname = hostname.split(".", 1)[0] or "localhost"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # syslog's stamp: "Nov  9 08:07:06" (day padded with a space).
            stamp = time.strftime("%b %e %H:%M:%S", time.localtime(record.created))
            text = record.getMessage().replace("\n", " ")
            os.write(self._fd, f"{stamp} {self.hostname} {text}\n".encode())
        except Exception:
            self.handleError(record)

    # Not close(): logging.config.dictConfig (uvicorn calls it) closes every
    # handler it finds, and a closed descriptor's number would be reused by
    # the next file opened (the queue's SQLite database).
    def close_file(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


def setup_maillog(syslog_name: str, maillog_file: str, hostname: str) -> None:
    """Name the lines (syslog_name) and open maillog_file, if any."""
    global _syslog_name
    _syslog_name = syslog_name or DEFAULT_SYSLOG_NAME
    for old in [h for h in log.handlers if isinstance(h, SyslogFileHandler)]:
        log.removeHandler(old)
        old.close_file()
    if maillog_file:
        log.addHandler(SyslogFileHandler(maillog_file, hostname))
