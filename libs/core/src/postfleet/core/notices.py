"""What every role that mails the postmaster shares: Postfix's notify_classes
words, the recipients' defaults, and how a bare notice address is qualified.

qmgr's bounce daemon (delivery status notifications and their postmaster
copies) and smtpd's session transcripts (policy, protocol, resource,
software errors) both read notify_classes; both send from
double_bounce_sender, whose mail is never bounced again.

Postfix parameters: notify_classes, double_bounce_sender, myorigin (passed in).
"""

from __future__ import annotations

import textwrap
from typing import Annotated

from pydantic import AfterValidator

from postfleet.core.postfix_list import PostfixList

NOTIFY_CLASSES = frozenset({"bounce", "2bounce", "data", "delay", "policy", "protocol",
                            "resource", "software"})
DEFAULT_NOTIFY_CLASSES = ("resource", "software")
POSTMASTER = "postmaster"
DOUBLE_BOUNCE = "double-bounce"


def _known_classes(value: list[str]) -> list[str]:
    words = [v.lower() for v in value]
    unknown = sorted(set(words) - NOTIFY_CLASSES)
    if unknown:
        raise ValueError(f"unknown notify_classes: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(NOTIFY_CLASSES))})")
    return words


NotifyClasses = Annotated[PostfixList, AfterValidator(_known_classes)]


def line_wrap(text: str, length: int, indent: int) -> list[str]:
    """Postfix's line_wrap: break at white space before ``length`` columns;
    the lines after the first are indented by ``indent`` (and as long in all)."""
    return textwrap.wrap(text, length, subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False) or [""]


def qualify(address: str, myorigin: str) -> str:
    """A bare name gets @myorigin, as Postfix's cleanup appends it."""
    return address if "@" in address else f"{address}@{myorigin}"
