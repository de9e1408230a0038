"""The scheduler: claim due recipients, resolve them, group them into
delivery jobs, and dispatch within per-destination concurrency limits.

It runs when woken (cleanup's ``queue.incoming`` notice, a result freeing a
slot, a bounce queued) and at least every queue_run_delay: that periodic
scan is what finds work whose bus notice was lost, deferred mail that came
due, and leases of dead qmgr replicas that expired (invariant 3).

Postfix parameters: queue_run_delay, default_destination_concurrency_limit
(or the snapshot's per-next-hop destination_concurrency_limits),
default_destination_recipient_limit, qmgr_message_recipient_limit;
transport_maps, relayhost, default_transport via the routing snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus.jobs import job_id
from postfleet.core.db.queue import Claimed, claim_due, release
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.resolver import resolve
from postfleet.core.routing.store import RoutingView
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger(__name__)

CLAIMED = Counter("postfleet_qmgr_claimed_total", "Recipients claimed for delivery")
DISPATCHED = Counter("postfleet_qmgr_jobs_dispatched_total", "Delivery jobs published",
                     ["transport"])
WAITING = Gauge("postfleet_qmgr_jobs_waiting", "Jobs held back by destination concurrency")
INFLIGHT = Gauge("postfleet_qmgr_jobs_inflight", "Jobs dispatched and not yet answered")

Destination = tuple[str, str]  # (transport, nexthop)
Publish = Callable[[delivery_pb2.Job], Awaitable[None]]


@dataclass
class _Inflight:
    dest: Destination
    since: float


class Scheduler:
    def __init__(
        self, settings: QmgrSettings, engine: AsyncEngine, routing: RoutingView,
        publish: Publish,
    ) -> None:
        self.s = settings
        self.engine = engine
        self.routing = routing
        self.publish = publish
        self.wakeup = asyncio.Event()
        self.waiting: dict[Destination, deque[delivery_pb2.Job]] = defaultdict(deque)
        self.inflight: dict[str, _Inflight] = {}
        self.per_dest: dict[Destination, int] = defaultdict(int)
        self._waiting_rcpts = 0

    def wake(self) -> None:
        self.wakeup.set()

    # -- the loop -------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.scan()
            except Exception:
                log.exception("queue scan failed; retrying at the next wake-up")
                await asyncio.sleep(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._next_wake(stopping), self.s.queue_run_delay)
            self.wakeup.clear()

    async def _next_wake(self, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self.wakeup.wait()),
                 asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def scan(self) -> None:
        """Claim everything due (in batches) and dispatch what limits allow."""
        self._expire_inflight()
        while True:
            room = self.s.qmgr_message_recipient_limit - self._waiting_rcpts
            limit = min(self.s.qmgr_claim_batch, room)
            claimed = await claim_due(self.engine, self.s.qmgr_owner, datetime.now(UTC),
                                      self.s.qmgr_lease_time, limit)
            if claimed:
                CLAIMED.inc(len(claimed))
                await self._enqueue(claimed)
            await self._dispatch()
            if len(claimed) < limit or limit <= 0:
                return

    async def _enqueue(self, claimed: list[Claimed]) -> None:
        snapshot = self.routing.snapshot
        # One job per message, destination and attempt count: a result's
        # attempt then holds for every recipient in it.
        groups: dict[tuple[str, Destination, int], list[Claimed]] = defaultdict(list)
        for c in claimed:
            route = resolve(snapshot, c.address)
            groups[(c.queue_id, (route.transport, route.nexthop), c.attempt)].append(c)
        limit = max(1, self.s.default_destination_recipient_limit)
        for (qid, dest, _attempt), rcpts in groups.items():
            for i in range(0, len(rcpts), limit):
                part = rcpts[i:i + limit]
                first = part[0]
                job = delivery_pb2.Job(
                    job_id=job_id(self.s.qmgr_owner, qid, first.id, first.attempt),
                    queue_id=qid, sender=first.sender, transport=dest[0], nexthop=dest[1],
                    attempt=first.attempt, trace_id=first.trace_id,
                    queued_at=first.arrived_at.timestamp(),
                    recipients=[delivery_pb2.JobRecipient(id=c.id, address=c.address,
                                                          orcpt=c.orcpt) for c in part],
                )
                self.waiting[dest].append(job)
                self._waiting_rcpts += len(part)
        WAITING.set(sum(len(q) for q in self.waiting.values()))

    async def _dispatch(self) -> None:
        default = self.s.default_destination_concurrency_limit
        limits = self.routing.snapshot.destination_concurrency_limits
        batch: list[delivery_pb2.Job] = []
        for dest, queue in self.waiting.items():
            limit = limits.get(f"{dest[0]}:{dest[1]}", default)
            while queue and self.per_dest[dest] < limit:
                job = queue.popleft()
                self._waiting_rcpts -= len(job.recipients)
                self.per_dest[dest] += 1
                self.inflight[job.job_id] = _Inflight(dest, time.monotonic())
                batch.append(job)
        for key in [d for d, q in self.waiting.items() if not q]:
            del self.waiting[key]
        if not batch:
            return
        outcomes = await asyncio.gather(*(self.publish(j) for j in batch),
                                        return_exceptions=True)
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # The bus is down: keep the job and try again at the next scan.
                self.done(job.job_id)
                self.waiting[(job.transport, job.nexthop)].appendleft(job)
                self._waiting_rcpts += len(job.recipients)
                log.warning("could not dispatch %s: %s", job.job_id, outcome)
            else:
                DISPATCHED.labels(job.transport).inc()
        WAITING.set(sum(len(q) for q in self.waiting.values()))
        INFLIGHT.set(len(self.inflight))

    def done(self, job_id: str) -> bool:
        """A job's result came back: free its destination slot."""
        entry = self.inflight.pop(job_id, None)
        if entry is None:
            return False
        self.per_dest[entry.dest] -= 1
        if self.per_dest[entry.dest] <= 0:
            del self.per_dest[entry.dest]
        INFLIGHT.set(len(self.inflight))
        return True

    def _expire_inflight(self) -> None:
        cutoff = time.monotonic() - self.s.qmgr_inflight_timeout
        for stale in [j for j, e in self.inflight.items() if e.since < cutoff]:
            self.done(stale)

    async def release_waiting(self) -> None:
        """On drain: hand back what was claimed but never dispatched."""
        ids = [r.id for q in self.waiting.values() for job in q for r in job.recipients]
        self.waiting.clear()
        self._waiting_rcpts = 0
        try:
            await release(self.engine, self.s.qmgr_owner, ids)
        except Exception:
            log.warning("could not release %d leases; they expire on their own", len(ids))
