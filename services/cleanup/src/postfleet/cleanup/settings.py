"""cleanup's settings (Postfix parameter names and defaults).

Postfix parameters: myhostname, message_size_limit, maximal_queue_lifetime,
bounce_queue_lifetime; header_checks, mime_header_checks,
nested_header_checks, body_checks, body_checks_size_limit (``CheckSettings``).
"""

from __future__ import annotations

from typing import ClassVar

from postfleet.core.checks.message import CheckSettings
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Days


class CleanupSettings(CommonSettings, CheckSettings):
    config_section: ClassVar[str | None] = "cleanup"

    # Where the gRPC Submit service binds (cleanup_address is what clients dial).
    cleanup_listen: str = "127.0.0.1:10027"
    message_size_limit: int = 10_240_000
    # Postfix: 5d each; a bare number means days.
    maximal_queue_lifetime: Days = 5  # validated as the settings are: a bare number is days
    bounce_queue_lifetime: Days = 5  # validated as the settings are: a bare number is days
    # Group commit: concurrent submissions share one transaction (this many at most).
    cleanup_commit_batch: int = 128
