"""The filter chain: header and body checks, then clamd, then spamd, on one
message; the first verdict that is not "pass" ends it.

- checks (``postfleet.core.checks``, Postfix's actions): REJECT refuses,
  DISCARD drops, HOLD holds, REDIRECT sends the copy to one address,
  PREPEND/REPLACE/IGNORE edit it; FILTER is ignored here (the message has
  been filtered);
- clamd: a virus found applies virus_action (reject, hold, discard), the
  virus's name in the reason; a clean message gets ``X-Virus-Scanned``;
- spamd: at or above spam_tag_level ``X-Spam-Status`` and ``X-Spam-Score``
  are added; at or above spam_kill_level spam_action applies (reject, hold,
  discard, pass);
- a scanner that cannot answer defers the message (4.3.0, it is scanned
  again later), or with failure mode "pass" lets it through with a header
  saying it was not scanned.

Postfix parameters: see settings.py.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from postfleet.core.checks.message import Checks, Verdict
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply
from postfleet.filter.scanners import Clamd, ScannerUnavailable, Spamd
from postfleet.filter.settings import FilterSettings

log = logging.getLogger(__name__)

Verb = Literal["pass", "reject", "hold", "discard", "defer"]
CHECK_INLINE_LIMIT = 64 * 1024


@dataclass
class Decision:
    """What happens to the message; ``body`` is the copy to re-inject."""

    verb: Verb
    body: bytes
    reason: str = ""  # for the log and the hold queue
    reply: SmtpReply | None = None  # reject or defer: what the original's recipients get
    redirect: str = ""


class Chain:
    def __init__(self, settings: FilterSettings) -> None:
        self.s = settings
        self.checks = Checks(settings)
        self.clamd = (Clamd(settings.clamd_address, settings.clamd_timeout)
                      if settings.clamd_address else None)
        self.spamd = (Spamd(settings.spamd_address, settings.spamd_timeout)
                      if settings.spamd_address else None)

    async def scan(self, message: bytes) -> Decision:
        decision = await self._checks(message)
        if decision.verb != "pass":
            return decision
        added: list[str] = []
        if self.clamd is not None:
            stop = await self._clamd(decision.body, added)
            if stop is not None:
                return stop
        if self.spamd is not None:
            stop = await self._spamd(decision.body, added)
            if stop is not None:
                stop.body = _prepend(stop.body, added)
                return stop
        decision.body = _prepend(decision.body, added)
        return decision

    async def _checks(self, message: bytes) -> Decision:
        if not self.checks:
            return Decision("pass", message)
        verdict: Verdict = (await asyncio.to_thread(self.checks.run, message)
                            if len(message) > CHECK_INLINE_LIMIT else self.checks.run(message))
        for action in verdict.actions:
            log.info("%s: %s %s%s", action.word, action.context, action.content,
                     f": {action.text}" if action.text else "")
        if verdict.reject is not None:
            return Decision("reject", message, str(verdict.reject), verdict.reject)
        if verdict.discard:
            return Decision("discard", message, "discarded by a check")
        if verdict.hold:
            return Decision("hold", verdict.body, verdict.hold_reason)
        return Decision("pass", verdict.body, redirect=verdict.redirect)

    async def _clamd(self, body: bytes, added: list[str]) -> Decision | None:
        assert self.clamd is not None
        try:
            virus = await self.clamd.virus(body)
        except ScannerUnavailable as exc:
            return self._unavailable(exc, self.s.clamd_failure_mode, "X-Virus-Scanned", added)
        if virus is None:
            added.append(f"X-Virus-Scanned: clamd at {self.s.myhostname}")
            return None
        reply = replies.VIRUS_FOUND.with_text(f"{replies.VIRUS_FOUND.text}: {virus}")
        reason = f"INFECTED: {virus}"
        return Decision(self.s.virus_action, body, reason, reply)

    async def _spamd(self, body: bytes, added: list[str]) -> Decision | None:
        assert self.spamd is not None
        try:
            result = await self.spamd.check(body)
        except ScannerUnavailable as exc:
            return self._unavailable(exc, self.s.spamd_failure_mode, "X-Spam-Status", added)
        spam = result.score >= self.s.spam_kill_level
        if result.score >= self.s.spam_tag_level:
            added.append(f"X-Spam-Status: {'Yes' if spam else 'No'}, score={result.score:.1f} "
                         f"required={self.s.spam_kill_level:.1f}")
            added.append(f"X-Spam-Score: {result.score:.1f}")
        if not spam or self.s.spam_action == "pass":
            return None
        reply = replies.SPAM_FOUND.with_text(
            f"{replies.SPAM_FOUND.text} (score {result.score:.1f})")
        return Decision(self.s.spam_action, body, f"SPAM: score {result.score:.1f}", reply)

    @staticmethod
    def _unavailable(
        exc: ScannerUnavailable, mode: str, header: str, added: list[str]
    ) -> Decision | None:
        if mode == "pass":
            log.warning("%s; passing the message unscanned", exc)
            added.append(f"{header}: unscanned ({exc})")
            return None
        log.warning("%s; the message is deferred", exc)
        reply = replies.SCANNER_UNAVAILABLE.with_text(
            f"{replies.SCANNER_UNAVAILABLE.text}: {exc}")
        return Decision("defer", b"", str(exc), reply)


def _prepend(body: bytes, headers: list[str]) -> bytes:
    if not headers:
        return body
    return "".join(f"{h}\r\n" for h in headers).encode("utf-8", "replace") + body
