"""A mail load as a careful client sends it: uniquely tagged messages over
a few concurrent sessions, at a set rate, each retried like an MTA retries
(a 4xx or a lost connection means "try again"; a 5xx is final), so fault
tests and the chaos benchmark can count what was accepted, what arrived,
what was lost and what arrived twice.

A message counts as accepted only when the client heard ``250`` after its
data. One whose reply was lost (the server died between commit and reply)
is sent again: that is how a duplicate is born, and the counts show it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiosmtplib

TAG_HEADER = "X-Load-Tag"


@dataclass
class LoadReport:
    sent: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # tag -> queue id
    accepted_at: dict[str, float] = field(default_factory=dict)  # tag -> monotonic time
    gave_up: list[str] = field(default_factory=list)  # tags never accepted
    refused: list[str] = field(default_factory=list)  # tags refused with a 5xx
    attempts: int = 0
    temp_failures: int = 0
    started: float = 0.0
    finished: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(1e-9, self.finished - self.started)

    @property
    def rate(self) -> float:
        return len(self.accepted) / self.elapsed


def message(tag: str, sender: str, rcpt: str, size: int = 1024) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: load {tag}\r\n"
            f"Message-ID: <{tag}@load.test>\r\n{TAG_HEADER}: {tag}\r\n\r\n")
    body = ("x" * 76 + "\r\n") * max(1, (size - len(head)) // 78)
    return (head + body).encode()


async def send_load(
    port: int, count: int, *, sessions: int = 10, rate: float | None = None,
    rcpt: str = "u{n}@example.test", sender: str = "load@sender.test", size: int = 1024,
    give_up_after: float = 120.0, retry_delay: float = 0.5, host: str = "127.0.0.1",
    prefix: str = "m",
) -> LoadReport:
    """Send ``count`` messages; ``rate`` messages per second at most overall."""
    report = LoadReport(started=time.monotonic())
    work: asyncio.Queue[int] = asyncio.Queue()
    for n in range(count):
        work.put_nowait(n)

    async def session() -> None:
        while True:
            try:
                n = work.get_nowait()
            except asyncio.QueueEmpty:
                return
            if rate:
                due = report.started + n / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await _deliver_one(host, port, f"{prefix}{n:06d}", sender,
                               rcpt.format(n=n), size, report, give_up_after, retry_delay)

    await asyncio.gather(*(session() for _ in range(sessions)))
    report.finished = time.monotonic()
    return report


async def _deliver_one(
    host: str, port: int, tag: str, sender: str, rcpt: str, size: int, report: LoadReport,
    give_up_after: float, retry_delay: float,
) -> None:
    data = message(tag, sender, rcpt, size)
    deadline = time.monotonic() + give_up_after
    report.sent += 1
    while True:
        report.attempts += 1
        try:
            async with aiosmtplib.SMTP(hostname=host, port=port, timeout=30) as smtp:
                _, reply = await smtp.sendmail(sender, [rcpt], data)
            report.accepted[tag] = reply.rsplit(" ", 1)[-1]
            report.accepted_at[tag] = time.monotonic()
            return
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code >= 500:
                report.refused.append(tag)
                return
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass  # connection refused, lost or timed out: try again
        report.temp_failures += 1
        if time.monotonic() + retry_delay > deadline:
            report.gave_up.append(tag)
            return
        await asyncio.sleep(retry_delay)


@dataclass
class Tally:
    """What arrived against what was accepted."""

    accepted: int
    delivered: int  # distinct accepted tags that arrived
    lost: list[str]
    duplicates: int  # extra copies beyond the first
    unexpected: int  # tags that arrived but were never accepted (reply lost)

    @property
    def duplicate_rate(self) -> float:
        return self.duplicates / max(1, self.accepted)


def tally(report: LoadReport, arrived_tags: Iterable[str]) -> Tally:
    counts = Counter(arrived_tags)
    lost = sorted(t for t in report.accepted if t not in counts)
    return Tally(
        accepted=len(report.accepted),
        delivered=sum(1 for t in report.accepted if t in counts),
        lost=lost,
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        unexpected=sum(1 for t in counts if t not in report.accepted),
    )
