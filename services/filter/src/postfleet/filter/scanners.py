"""The scanners the chain asks: ClamAV's clamd (INSTREAM, through aioclamd)
and SpamAssassin's spamd (CHECK, through aiospamc). Each answers with a
typed result or raises ``ScannerUnavailable`` (not reachable, timed out, a
protocol error): what happens then is the failure mode's business.

Postfix parameters: none (spamd_address, spamd_timeout, clamd_address,
clamd_timeout are postfleet's own).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import aioclamd
import aiospamc
from aiospamc.connections import Timeout
from loguru import logger

from postfleet.filter.settings import host_port

# aiospamc logs every request through loguru: not in a mail server's log.
logger.disable("aiospamc")


class ScannerUnavailable(Exception):
    """The scanner could not give an answer."""


@dataclass(frozen=True, slots=True)
class SpamScore:
    score: float
    threshold: float


class Spamd:
    def __init__(self, address: str, timeout: float) -> None:
        self.host, self.port = host_port(address)
        self.timeout = timeout

    async def check(self, message: bytes) -> SpamScore:
        try:
            response = await aiospamc.check(message, host=self.host, port=self.port,
                                            timeout=Timeout(total=self.timeout))
        except Exception as exc:
            raise ScannerUnavailable(f"spamd {self.host}:{self.port}: "
                                     f"{exc or type(exc).__name__}") from exc
        spam = response.headers.spam
        if spam is None:
            raise ScannerUnavailable(f"spamd {self.host}:{self.port}: no Spam header")
        return SpamScore(float(spam.score), float(spam.threshold))


class Clamd:
    def __init__(self, address: str, timeout: float) -> None:
        self.host, self.port = host_port(address)
        self.client = aioclamd.ClamdAsyncClient(self.host, self.port, timeout=timeout)

    async def virus(self, message: bytes) -> str | None:
        """The virus found (its signature name), or None when the message is clean."""
        try:
            found = await self.client.instream(io.BytesIO(message))
        except Exception as exc:
            raise ScannerUnavailable(f"clamd {self.host}:{self.port}: "
                                     f"{exc or type(exc).__name__}") from exc
        if not found:
            raise ScannerUnavailable(f"clamd {self.host}:{self.port}: no answer")
        status, name = next(iter(found.values()))
        if status == "FOUND":
            return str(name)
        if status != "OK":
            raise ScannerUnavailable(f"clamd {self.host}:{self.port}: {status} {name}")
        return None
