"""qmgr's settings (Postfix parameter names and defaults).

Postfix parameters: queue_run_delay, minimal_backoff_time,
maximal_backoff_time, bounce_queue_lifetime (of the notices qmgr queues;
cleanup sets every other message's expiry),
default_destination_concurrency_limit, default_destination_recipient_limit,
qmgr_message_recipient_limit, default_filter_nexthop, myhostname; the
notices' (bounce.py): notify_classes, bounce_notice_recipient,
2bounce_notice_recipient, delay_notice_recipient, double_bounce_sender,
bounce_size_limit, delay_warning_time; ETRN's flush service:
fast_flush_domains.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import ClassVar

from pydantic import AliasChoices, Field

from postfleet.core.notices import (
    DEFAULT_NOTIFY_CLASSES,
    DOUBLE_BOUNCE,
    POSTMASTER,
    NotifyClasses,
)
from postfleet.core.postfix_list import PostfixList
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Days, Hours, Seconds


def _owner() -> str:
    """A unique identity when none is given. A fixed one (the launcher's
    slot, a pod's name) lets a restarted qmgr take its own work back at
    once; two live qmgrs must never share one."""
    host = socket.gethostname().split(".")[0][:40] or "qmgr"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


class QmgrSettings(CommonSettings):
    config_section: ClassVar[str | None] = "qmgr"

    queue_run_delay: Seconds = 300
    minimal_backoff_time: Seconds = 300
    maximal_backoff_time: Seconds = 4000
    # Postfix: 5d; a bare number means days.
    bounce_queue_lifetime: Days = 5  # validated as the settings are: a bare number is days
    default_destination_concurrency_limit: int = 20
    # Postfix: 0s (off). Above 0, one delivery at a time per destination,
    # this far apart, fleet-wide.
    default_destination_rate_delay: Seconds = 0
    default_destination_recipient_limit: int = 50
    # A content filter written without a nexthop ("filter:") goes here; empty
    # (Postfix's default): the recipient's domain.
    default_filter_nexthop: str = ""
    # Delivery status notifications (bounce.py), Postfix's names and defaults.
    notify_classes: NotifyClasses = Field(default_factory=lambda: list(DEFAULT_NOTIFY_CLASSES))
    bounce_notice_recipient: str = POSTMASTER
    # Postfix's 2bounce_notice_recipient (a name Python cannot spell): in the
    # YAML file and as POSTFLEET_2BOUNCE_NOTICE_RECIPIENT.
    two_bounce_notice_recipient: str = Field(
        default=POSTMASTER,
        validation_alias=AliasChoices("two_bounce_notice_recipient",
                                      "2bounce_notice_recipient",
                                      "POSTFLEET_2BOUNCE_NOTICE_RECIPIENT"))
    delay_notice_recipient: str = POSTMASTER
    double_bounce_sender: str = DOUBLE_BOUNCE
    # Bytes of the original a failure notice returns whole (RET=FULL); a
    # larger one goes back as its headers only.
    bounce_size_limit: int = Field(default=50000, ge=0)
    # Postfix: 0h (off); a bare number means hours.
    delay_warning_time: Hours = 0
    # The sites ETRN may flush (Postfix's flush service): "$relay_domains"
    # stands for the routing snapshot's relay_domains.
    fast_flush_domains: PostfixList = Field(default_factory=lambda: ["$relay_domains"])
    # Recipients held in memory (claimed, not yet dispatched) at most.
    qmgr_message_recipient_limit: int = 20000
    # postfleet-specific: how many due recipients one claim takes, how long a
    # claim (lease) lasts before another qmgr may retake the work if this one
    # dies (renewed every third of it while it lives), how many results one
    # database transaction applies.
    qmgr_claim_batch: int = 500
    # Woken by every cleanup commit, qmgr scans at most this often: the
    # messages committed meanwhile share one claim transaction.
    qmgr_scan_interval: Seconds = 0.02
    qmgr_lease_time: Seconds = 30
    qmgr_result_batch: int = 256
    # A dispatched job whose result never came back (lost on the bus) is
    # given up after this long: its leases run out and the work is retaken.
    qmgr_inflight_timeout: Seconds = 900
    # This qmgr's identity in leases (no "/": it is part of job ids).
    qmgr_owner: str = Field(default_factory=_owner)
    # At start-up, wait at most this long for the results already on the bus
    # (and those a dead process held, back after the results' 10 s ack wait)
    # before taking back the work a previous life of this qmgr held.
    qmgr_takeback_wait: Seconds = 15
    # How often the queue's shape (messages by queue, size and age: the
    # postfix_showq_* metrics) is read from the queue store.
    qmgr_queue_shape_interval: Seconds = 15
