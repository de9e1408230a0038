"""The error and discard transports: Postfix's error(8) and discard(8).

error: the nexthop is the reason, optionally led by an RFC 3463 code
(transport(5): ``example.com  error:5.1.1 mailbox unavailable``). A 4.x.x code
defers, a 5.x.x one bounces; without one the status is 5.0.0. The code is not
repeated in the text: ``status=bounced (mailbox unavailable)``.

discard: every recipient is reported sent (2.0.0) without delivering
anything; the nexthop is the reason logged (a leading 2.x.x code, if any, is
used as the status), "discarded" when it is empty. relay=none for both.
"""

from __future__ import annotations

import re

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.outcome import RELAY_NONE, Delivery, outcome
from postfleet.delivery.store import StoredMessage

_CODE = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


def split_reason(text: str) -> tuple[str | None, str]:
    """("4.7.1", "rest") when the text starts with an enhanced status code."""
    match = _CODE.match(text)
    if match is None:
        return None, text.strip()
    return ".".join(match.groups()), text[match.end():].strip()


class ErrorTransport:
    program = "error"

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        code, reason = split_reason(job.nexthop)
        if code is None or code.startswith("2"):
            code = "5.0.0"  # error(8) never reports success
        return Delivery.all(len(job.recipients), outcome(code, reason or "delivery failed"),
                            RELAY_NONE)


class DiscardTransport:
    program = "discard"

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        code, reason = split_reason(job.nexthop)
        if code is None or not code.startswith("2"):
            code = "2.0.0"  # discard(8) always reports success
        result = outcome(code, reason or "discarded")
        return Delivery.all(len(job.recipients), result, RELAY_NONE)
