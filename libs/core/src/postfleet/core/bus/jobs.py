"""Delivery job ids: the idempotency key of a job and of its result.

A job id is ``<owner>/<queue id>/<first recipient id>/<attempt>``: the qmgr
replica that dispatched it (so a result applied by another replica can free
the owner's destination slot), the message, and the attempt, so a repeat of
the same job is recognised (``Nats-Msg-Id``) while the next attempt is a new
job. Built and parsed here only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobKey:
    owner: str
    queue_id: str
    first_recipient: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.owner}/{self.queue_id}/{self.first_recipient}/{self.attempt}"


def job_id(owner: str, queue_id: str, first_recipient: int, attempt: int) -> str:
    if "/" in owner or "/" in queue_id:
        raise ValueError(f"owner {owner!r} and queue id {queue_id!r} may not contain '/'")
    return str(JobKey(owner, queue_id, first_recipient, attempt))


def parse_job_id(value: str) -> JobKey | None:
    """The parts of a job id, or None for anything else (a foreign or
    damaged id is never fatal: the result is still applied by recipient id)."""
    parts = value.split("/")
    if len(parts) != 4 or not all(parts[:2]):
        return None
    try:
        return JobKey(parts[0], parts[1], int(parts[2]), int(parts[3]))
    except ValueError:
        return None


def result_msg_id(job: str) -> str:
    """Nats-Msg-Id of a job's result: a repeated publish is dropped."""
    return f"{job}/result"
