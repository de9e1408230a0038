"""filter's settings: Postfix's header/body check parameters, and the
scanners' addresses, levels and failure modes (amavisd-new's words where
Postfix has none).

Postfix parameters: header_checks, mime_header_checks, nested_header_checks,
body_checks, body_checks_size_limit (``CheckSettings``), myhostname.
postfleet's own: filter_transport (the transport name it serves, as the
content_filter "filter:" names it), filter_process_limit, filter_ack_wait,
filter_fetch_timeout, filter_drain_timeout; spamd_address, spamd_timeout,
spam_tag_level, spam_kill_level, spam_action, spamd_failure_mode;
clamd_address, clamd_timeout, virus_action, clamd_failure_mode.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from postfleet.core.checks.message import CheckSettings
from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Seconds

Action = Literal["reject", "hold", "discard", "pass"]
FailureMode = Literal["defer", "pass"]


class FilterSettings(CommonSettings, CheckSettings):
    config_section: ClassVar[str | None] = "filter"

    # The transport this role serves: content_filter = filter: (or filter:host).
    filter_transport: str = "filter"
    # Messages scanned at once per process.
    filter_process_limit: int = 20
    # A fetched job says "in progress" every half of this; a dead filter's
    # jobs go to another replica after it (the message is scanned again).
    filter_ack_wait: Seconds = 30.0
    filter_fetch_timeout: Seconds = 2.0
    filter_drain_timeout: Seconds = 25.0

    # SpamAssassin's spamd, "host:port"; empty: no spam scan.
    spamd_address: str = ""
    spamd_timeout: Seconds = 60.0
    # X-Spam-Status / X-Spam-Score are added at or above the tag level
    # (amavisd-new's sa_tag_level_deflt; the default: always); at or above
    # the kill level (sa_kill_level_deflt) the message is spam and
    # spam_action applies.
    spam_tag_level: float = -999.0
    spam_kill_level: float = 6.9
    spam_action: Action = "reject"
    # When spamd cannot be asked: defer (nothing passes unscanned) or pass
    # with "X-Spam-Status: unscanned (...)".
    spamd_failure_mode: FailureMode = "defer"

    # ClamAV's clamd, "host:port" (INSTREAM); empty: no virus scan.
    clamd_address: str = ""
    clamd_timeout: Seconds = 60.0
    virus_action: Literal["reject", "hold", "discard"] = "reject"
    # When clamd cannot be asked: defer, or pass with
    # "X-Virus-Scanned: unscanned (...)".
    clamd_failure_mode: FailureMode = "defer"

    @field_validator("spamd_address", "clamd_address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{value!r}: need host:port")
        return value


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
