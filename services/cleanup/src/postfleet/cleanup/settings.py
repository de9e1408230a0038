"""cleanup's settings (Postfix parameter names and defaults).

Postfix parameters: myhostname, message_size_limit, maximal_queue_lifetime,
bounce_queue_lifetime; header_checks, mime_header_checks,
nested_header_checks, body_checks, body_checks_size_limit (``CheckSettings``);
non_smtpd_milters and the milter_* parameters (``MilterParams``). postfleet's
own: dkim_key_directory, arc_seal_domain (signing.py).
"""

from __future__ import annotations

from typing import ClassVar

from postfleet.core.checks.message import CheckSettings
from postfleet.core.milter.settings import MilterParams
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Days


class CleanupSettings(CommonSettings, CheckSettings, MilterParams):
    config_section: ClassVar[str | None] = "cleanup"

    # Where the gRPC Submit service binds (cleanup_address is what clients dial).
    cleanup_listen: str = "127.0.0.1:10027"
    message_size_limit: int = 10_240_000
    # Postfix: 5d each; a bare number means days.
    maximal_queue_lifetime: Days = 5  # validated as the settings are: a bare number is days
    bounce_queue_lifetime: Days = 5  # validated as the settings are: a bare number is days
    # Group commit: concurrent submissions share one transaction (this many at most).
    cleanup_commit_batch: int = 128
    # DKIM: the directory of private keys, one file per key named
    # <selector>._domainkey.<domain> (postfleet dkim keygen writes them; in
    # Kubernetes the chart mounts the operator's Secret here). Empty: no signing.
    dkim_key_directory: str = ""
    # ARC: seal mail forwarded to outside domains with this domain's RSA key
    # from dkim_key_directory. Empty: no sealing.
    arc_seal_domain: str = ""
