"""What a transport reports for one job: the relay and each recipient's outcome.

Postfix's three outcomes (``postfleet.core.db.status.Outcome``): sent (2xx),
deferred (4xx, retried by qmgr) and bounced (5xx, a non-delivery notice).
The status follows the enhanced status code's class, so a transport only has
to get the DSN right.
"""

from __future__ import annotations

from dataclasses import dataclass

from postfleet.core.db.status import Outcome as Status

RELAY_NONE = "none"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    dsn: str  # enhanced status code, e.g. 2.0.0
    reply: str  # remote reply or local explanation, as in the log's "(...)"
    diagnostic: str = ""  # the bare remote reply, for the DSN's Diagnostic-Code
    # Delivered to a next hop that offered DSN, the request passed on to it.
    passed_on: bool = False


def outcome(dsn: str, reply: str, diagnostic: str = "", passed_on: bool = False) -> Outcome:
    """The outcome a DSN status implies: 2.x.x sent, 5.x.x bounced, else deferred."""
    return Outcome(Status.from_dsn(dsn), dsn, reply, diagnostic, passed_on)


MISCONFIGURED = "mail system configuration error: {error}"


def misconfigured(error: Exception) -> Outcome:
    """4.3.5 for a job whose nexthop the transport cannot use: deferred, so
    that it goes once the routing is fixed."""
    return outcome("4.3.5", MISCONFIGURED.format(error=error))


@dataclass(slots=True)
class Delivery:
    """A transport's answer: ``outcomes[i]`` belongs to the job's i-th recipient."""

    relay: str
    outcomes: list[Outcome]
    # Delivered to the final destination (a mailbox): success notices say
    # "delivered", not "relayed".
    final: bool = False

    @classmethod
    def all(cls, count: int, result: Outcome, relay: str = RELAY_NONE) -> Delivery:
        return cls(relay, [result] * count)


class TransportFailure(Exception):
    """A session that could not go on: every recipient still open gets
    ``result``; ``relay`` is "none" unless a server was reached."""

    def __init__(self, result: Outcome, relay: str = RELAY_NONE) -> None:
        super().__init__(result.reply)
        self.result = result
        self.relay = relay
