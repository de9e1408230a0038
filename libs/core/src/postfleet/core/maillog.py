"""Postfix-format mail log lines, so pflogsumm and existing tooling keep working.

    postfleet/smtpd[1234]: 3F2A1...: client=host[1.2.3.4]
    postfleet/smtp[1240]: 3F2A1...: to=<a@b>, relay=h[1.2.3.4]:25, delay=0.4,
        dsn=2.0.0, status=sent (250 2.0.0 Ok)

``program`` is the Postfix daemon each role stands for (smtpd, cleanup, qmgr,
smtp, lmtp, local, bounce). A line about a session rather than a message
(``Verified TLS connection established to …``) has no queue id, as in Postfix.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("postfleet.maillog")


def maillog(program: str, queue_id: str, text: str) -> None:
    if not queue_id:
        log.info("postfleet/%s[%d]: %s", program, os.getpid(), text)
        return
    log.info(
        "postfleet/%s[%d]: %s: %s", program, os.getpid(), queue_id, text,
        extra={"queue_id": queue_id},
    )


def maillog_event(program: str, text: str, *, level: int = logging.INFO) -> None:
    """A line that belongs to no queue file: ``postfleet/smtpd[pid]: text``
    (TLS sessions, SASL failures, anvil limits; warnings start "warning: ")."""
    log.log(level, "postfleet/%s[%d]: %s", program, os.getpid(), text)


def delivery_line(
    *, address: str, orig: str = "", relay: str, delay: float, dsn: str, status: str,
    reply: str,
) -> str:
    orig_part = f", orig_to=<{orig}>" if orig and orig != address else ""
    return (
        f"to=<{address}>{orig_part}, relay={relay}, delay={delay:.2g}, dsn={dsn}, "
        f"status={status} ({reply})"
    )
