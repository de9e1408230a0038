"""delivery's settings (Postfix parameter names and defaults).

Postfix parameters: myhostname, default_process_limit, smtp_helo_name,
smtp_connect_timeout, smtp_helo_timeout, smtp_mail_timeout,
smtp_rcpt_timeout, smtp_data_init_timeout, smtp_data_done_timeout,
smtp_rset_timeout, smtp_quit_timeout, smtp_connection_cache_time_limit,
smtp_connection_reuse_time_limit, smtp_connection_reuse_count_limit,
smtp_mx_address_limit.

postfleet's own (the bus has no Postfix counterpart): delivery_ack_wait,
delivery_fetch_batch, delivery_fetch_timeout, delivery_result_retry_time,
delivery_drain_timeout, delivery_db_pool_size.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, ClassVar

from pydantic import BeforeValidator, model_validator
from pydantic_settings import NoDecode

from postfleet.core.settings import CommonSettings
from postfleet.core.timeparse import Seconds


def _name_list(value: object) -> object:
    """Postfix-style lists: "smtp, relay" or "smtp relay" as well as JSON/YAML lists."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part for part in re.split(r"[\s,]+", text) if part]
    return value


NameList = Annotated[list[str], NoDecode, BeforeValidator(_name_list)]


class DeliverySettings(CommonSettings):
    config_section: ClassVar[str | None] = "delivery"

    # Transports this process serves; each has one durable pull consumer on
    # postfleet.delivery.<transport>, shared by every replica.
    # Postfix's master.cf runs "relay" (relay_transport) as the smtp client too.
    transports: NameList = ["smtp", "relay"]
    # Postfix: default_process_limit (100) — here, concurrent jobs per process.
    default_process_limit: int = 100

    # -- bus -------------------------------------------------------------------
    # How long a fetched job may stay unacknowledged before JetStream hands it
    # to another replica: longer than the slowest delivery (smtp_data_done_timeout).
    delivery_ack_wait: Seconds = 600.0
    delivery_fetch_batch: int = 64
    # Long-poll of one fetch when the queue is idle; also bounds shutdown.
    delivery_fetch_timeout: Seconds = 5.0
    # How long to keep retrying a result publish (NATS restarting) before
    # giving up on the job unacknowledged, so that it is redelivered.
    delivery_result_retry_time: Seconds = 30.0
    # SIGTERM: finish jobs in hand for at most this long; the rest are redelivered.
    delivery_drain_timeout: Seconds = 30.0
    delivery_db_pool_size: int = 10

    # -- smtp client (Postfix smtp(8)) -------------------------------------------
    smtp_helo_name: str = "$myhostname"
    smtp_connect_timeout: Seconds = 30.0
    smtp_helo_timeout: Seconds = 300.0
    smtp_mail_timeout: Seconds = 300.0
    smtp_rcpt_timeout: Seconds = 300.0
    smtp_data_init_timeout: Seconds = 120.0
    # Covers sending the body too (Postfix's smtp_data_xfer_timeout is not
    # separate: the body is handed to the socket in one write).
    smtp_data_done_timeout: Seconds = 600.0
    smtp_rset_timeout: Seconds = 20.0
    smtp_quit_timeout: Seconds = 300.0
    smtp_mx_address_limit: int = 5
    # Connection cache: an idle session is closed after the cache time limit;
    # a session is not reused once older than the reuse time limit or after
    # the reuse count limit (0: no limit).
    smtp_connection_cache_time_limit: Seconds = 2.0
    smtp_connection_reuse_time_limit: Seconds = 300.0
    smtp_connection_reuse_count_limit: int = 0

    @model_validator(mode="after")
    def _expand(self) -> DeliverySettings:
        self.smtp_helo_name = self.smtp_helo_name.replace("$myhostname", self.myhostname)
        self.smtp_helo_name = self.smtp_helo_name.replace("${myhostname}", self.myhostname)
        if self.default_process_limit < 1:
            raise ValueError("default_process_limit must be at least 1")
        if self.delivery_fetch_batch < 1:
            raise ValueError("delivery_fetch_batch must be at least 1")
        return self
