"""The scheduler: claim due recipients, resolve them, group them into
delivery jobs, and dispatch within per-destination limits held by the
whole fleet.

It runs when woken (cleanup's ``queue.incoming`` notice, a result freeing a
destination slot anywhere in the fleet, a bounce queued, an admin action)
and at least every queue_run_delay: that periodic scan is what finds work
whose bus notice was lost, deferred mail that came due, and leases of dead
qmgr replicas that expired (invariant 3). While jobs wait for a slot or a
rate delay it looks again sooner.

Claimed work is leased (``qmgr_lease_time``, tens of seconds) and the lease
is renewed every third of that while this qmgr lives (``LeaseKeeper``) for
what it still holds: jobs waiting, and jobs dispatched less than
qmgr_inflight_timeout ago whose result has not come back (a job lost on
the bus is retaken when its lease ends). So a qmgr that dies strands
nothing for longer than one lease; one that comes back under the same
``qmgr_owner`` (the launcher's slot, the pod's name) takes its work back at
once (``take_back`` at start-up).

Concurrency per destination (``transport:nexthop``) is counted in the queue
store's destination slots, so N replicas together never open more than the
limit: a job is published only once its slot is inserted; the slot goes
when its result is applied, or with its owner's lease.

Postfix parameters: queue_run_delay, default_destination_concurrency_limit
(or the snapshot's per-next-hop destination_concurrency_limits),
default_destination_rate_delay, default_destination_recipient_limit,
qmgr_message_recipient_limit, default_filter_nexthop (a message with a
content filter goes to the filter, not its recipients' routes); transport_maps,
relayhost, default_transport via the routing snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from postfleet.core.bus.jobs import job_id
from postfleet.core.db import queue
from postfleet.core.db.queue import Claimed, SlotRequest
from postfleet.core.maillog import maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.resolver import filter_route, resolve
from postfleet.core.routing.store import RoutingView
from postfleet.core.smtp.dsn import smtputf8_requested
from postfleet.qmgr import metrics
from postfleet.qmgr.settings import QmgrSettings

log = logging.getLogger(__name__)

CLAIMED = Counter("postfleet_qmgr_claimed_total", "Recipients claimed for delivery")
DISPATCHED = Counter("postfleet_qmgr_jobs_dispatched_total", "Delivery jobs published",
                     ["transport"])
WAITING = Gauge("postfleet_qmgr_jobs_waiting",
                "Jobs held back by destination concurrency or rate delay")

Destination = tuple[str, str]  # (transport, nexthop)
Publish = Callable[[delivery_pb2.Job], Awaitable[None]]

# While jobs wait for a slot, look again at least this often (a freed slot
# also wakes every replica at once; this covers a lost wake-up).
WAITING_RETRY_S = 1.0


def destination_key(dest: Destination) -> str:
    """The destination as the snapshot's limits and the slots table name it."""
    return f"{dest[0]}:{dest[1]}"


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
        # Dispatched jobs whose result has not been seen: job id -> (recipient
        # ids, monotonic dispatch time). Only for lease renewal.
        self.inflight: dict[str, tuple[list[int], float]] = {}
        self._waiting_rcpts = 0
        self._paced_until: datetime | None = None
        # Booking slots for waiting jobs and taking those jobs off ``waiting``
        # is one step: a scan and a results batch (``refill``) never book
        # the same job twice.
        self.booking = asyncio.Lock()
        # The last scan stopped at qmgr_message_recipient_limit: due mail
        # may be left unclaimed until jobs leave ``waiting``.
        self.room_limited = False

    def wake(self) -> None:
        self.wakeup.set()

    # -- the loop -------------------------------------------------------------
    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stopping.is_set():
            started = loop.time()
            try:
                await self.scan()
            except Exception:
                log.exception("queue scan failed; retrying at the next wake-up")
                await asyncio.sleep(1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._next_wake(stopping), self._next_delay())
            # Wake-ups that come close together share one scan (one claim
            # transaction for many new messages): at most one scan per
            # qmgr_scan_interval, however often cleanup commits.
            pause = started + self.s.qmgr_scan_interval - loop.time()
            if pause > 0 and not stopping.is_set():
                await asyncio.sleep(pause)
            self.wakeup.clear()

    def _next_delay(self) -> float:
        delay = self.s.queue_run_delay
        if self.waiting:
            delay = min(delay, WAITING_RETRY_S)
        if self._paced_until is not None:
            until = (self._paced_until - datetime.now(UTC)).total_seconds()
            delay = min(delay, max(0.05, until))
        return delay

    async def _next_wake(self, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(self.wakeup.wait()),
                 asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def scan(self) -> None:
        """Claim everything due (in batches) and dispatch what limits allow:
        claims and destination slots in one transaction per batch."""
        while True:
            room = self.s.qmgr_message_recipient_limit - self._waiting_rcpts
            limit = min(self.s.qmgr_claim_batch, room)
            self.room_limited = room < self.s.qmgr_claim_batch
            async with self.booking:
                claimed = await self._claim_and_publish(limit)
            for m in claimed.activated:
                maillog("qmgr", m.queue_id,
                        f"from=<{m.sender}>, size={m.size}, nrcpt={m.nrcpt} (queue active)")
                metrics.INSERTED_SIZE.observe(m.size)
                metrics.INSERTED_RCPTS.observe(m.nrcpt)
            CLAIMED.inc(len(claimed))
            if len(claimed) < limit or limit <= 0:
                return

    async def _claim_and_publish(self, limit: int) -> queue.Claims:
        planned: list[delivery_pb2.Job] = []
        try:
            claimed, granted = await queue.claim_and_book(
                self.engine, self.s.qmgr_owner, datetime.now(UTC),
                self.s.qmgr_lease_time, limit, functools.partial(self._plan, planned))
        except BaseException:
            self._forget(planned)  # their claims were never committed
            raise
        await self.publish_granted(granted)
        return claimed

    async def refill(self, conn: AsyncConnection) -> dict[str, list[str]]:
        """Inside the transaction that applies results (and so frees slots):
        book waiting jobs into the free slots. The caller holds ``booking``
        and calls ``publish_granted`` once the transaction committed."""
        if not self.waiting:
            return {}
        return await queue.book_slots(conn, self.s.qmgr_owner, datetime.now(UTC),
                                      self.s.qmgr_lease_time, self._slot_requests())

    def _plan(self, planned: list[delivery_pb2.Job], claimed: list[Claimed]
              ) -> list[SlotRequest]:
        planned[:] = self._enqueue(claimed)
        return self._slot_requests()

    def _forget(self, jobs: list[delivery_pb2.Job]) -> None:
        gone = {j.job_id for j in jobs}
        for dest in list(self.waiting):
            kept = deque(j for j in self.waiting[dest] if j.job_id not in gone)
            self._waiting_rcpts -= sum(len(j.recipients) for j in self.waiting[dest]
                                       if j.job_id in gone)
            if kept:
                self.waiting[dest] = kept
            else:
                del self.waiting[dest]

    def _enqueue(self, claimed: list[Claimed]) -> list[delivery_pb2.Job]:
        # One job per message, destination and attempt count: a result's
        # attempt then holds for every recipient in it.
        groups: dict[tuple[str, Destination, int], list[Claimed]] = defaultdict(list)
        for c in claimed:
            groups[(c.queue_id, self._destination(c), c.attempt)].append(c)
        limit = max(1, self.s.default_destination_recipient_limit)
        jobs: list[delivery_pb2.Job] = []
        for (qid, dest, _attempt), rcpts in groups.items():
            for i in range(0, len(rcpts), limit):
                part = rcpts[i:i + limit]
                first = part[0]
                job = delivery_pb2.Job(
                    job_id=job_id(self.s.qmgr_owner, qid, first.id, first.attempt),
                    queue_id=qid, sender=first.sender, transport=dest[0], nexthop=dest[1],
                    attempt=first.attempt, trace_id=first.trace_id,
                    queued_at=first.arrived_at.timestamp(), ret=first.ret, envid=first.envid,
                    smtputf8=smtputf8_requested(first.protocol),
                    recipients=[delivery_pb2.JobRecipient(
                        id=c.id, address=c.address, orcpt=c.orig_rcpt, dsn_orcpt=c.orcpt,
                        notify=c.notify) for c in part],
                )
                self.waiting[dest].append(job)
                self._waiting_rcpts += len(part)
                jobs.append(job)
        WAITING.set(self._waiting_jobs())
        return jobs

    def _destination(self, c: Claimed) -> Destination:
        """A content filter overrides the recipient's route (Postfix's qmgr):
        the message goes to its filter first, its recipients unchanged."""
        if c.content_filter:
            return filter_route(c.content_filter, c.address, self.s.default_filter_nexthop,
                                self.s.myhostname)
        route = resolve(self.routing.snapshot, c.address)
        return route.transport, route.nexthop

    def _slot_requests(self) -> list[SlotRequest]:
        default = self.s.default_destination_concurrency_limit
        limits = self.routing.snapshot.destination_concurrency_limits
        requests = []
        for dest, jobs in self.waiting.items():
            key = destination_key(dest)
            limit = limits.get(key, default)
            # No more than the limit can be granted: name only the first
            # ones (a long wait list is not walked for every booking).
            first = itertools.islice(jobs, max(1, limit))
            requests.append(SlotRequest(
                key, [j.job_id for j in first], limit, self.s.default_destination_rate_delay))
        return requests

    async def publish_granted(self, granted: dict[str, list[str]]) -> None:
        """Publish the waiting jobs that got a destination slot."""
        batch: list[delivery_pb2.Job] = []
        for dest in list(self.waiting):
            count = len(granted.get(destination_key(dest), ()))
            jobs = self.waiting[dest]
            for _ in range(count):
                job = jobs.popleft()
                self._waiting_rcpts -= len(job.recipients)
                batch.append(job)
            if not jobs:
                del self.waiting[dest]
        await self._publish(batch)
        if self.s.default_destination_rate_delay > 0:
            await self._note_pacing([destination_key(d) for d in self.waiting])
        WAITING.set(self._waiting_jobs())

    async def _publish(self, batch: list[delivery_pb2.Job]) -> None:
        if not batch:
            return
        outcomes = await asyncio.gather(*(self.publish(j) for j in batch),
                                        return_exceptions=True)
        unsent: list[delivery_pb2.Job] = []
        for job, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                # The bus is down: keep the job and try again at the next scan.
                log.warning("could not dispatch %s: %s", job.job_id, outcome)
                unsent.append(job)
            else:
                DISPATCHED.labels(job.transport).inc()
                self.inflight[job.job_id] = ([r.id for r in job.recipients], time.monotonic())
        if unsent:
            for job in reversed(unsent):
                self.waiting[(job.transport, job.nexthop)].appendleft(job)
                self._waiting_rcpts += len(job.recipients)
            await queue.release_slots(self.engine, [j.job_id for j in unsent])

    async def _note_pacing(self, paced: list[str]) -> None:
        waiting = {destination_key(d) for d in self.waiting}
        self._paced_until = await queue.next_pacing(
            self.engine, [d for d in paced if d in waiting])

    def finished(self, job_ids: list[str]) -> None:
        """These jobs' results were applied (by this replica or another)."""
        for job in job_ids:
            self.inflight.pop(job, None)

    def held(self) -> tuple[list[int], list[str]]:
        """What this qmgr holds now: recipient ids and in-flight job ids whose
        leases it renews. In-flight jobs older than qmgr_inflight_timeout are
        given up (lost on the bus, or stuck): their leases run out."""
        cutoff = time.monotonic() - self.s.qmgr_inflight_timeout
        for job in [j for j, (_ids, since) in self.inflight.items() if since < cutoff]:
            log.warning("no result for job %s after %.0fs; its lease will run out", job,
                        self.s.qmgr_inflight_timeout)
            del self.inflight[job]
        rcpts = [r.id for q in self.waiting.values() for job in q for r in job.recipients]
        rcpts += [i for ids, _since in self.inflight.values() for i in ids]
        return rcpts, list(self.inflight)

    def _waiting_jobs(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    async def release_waiting(self) -> None:
        """On drain: hand back what was claimed but never dispatched."""
        ids = [r.id for q in self.waiting.values() for job in q for r in job.recipients]
        self.waiting.clear()
        self._waiting_rcpts = 0
        try:
            await queue.release(self.engine, self.s.qmgr_owner, ids)
        except Exception:
            log.warning("could not release %d leases; they expire on their own", len(ids))


class LeaseKeeper:
    """Renews this qmgr's leases (recipients and destination slots) every
    third of qmgr_lease_time, for as long as the process lives."""

    def __init__(self, settings: QmgrSettings, engine: AsyncEngine, scheduler: Scheduler) -> None:
        self.s = settings
        self.engine = engine
        self.scheduler = scheduler

    async def run(self, stopping: asyncio.Event) -> None:
        every = max(0.5, self.s.qmgr_lease_time / 3)
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), every)
            rcpts, jobs = self.scheduler.held()
            try:
                await queue.renew_leases(self.engine, self.s.qmgr_owner, datetime.now(UTC),
                                         self.s.qmgr_lease_time, rcpts, jobs)
            except Exception as exc:
                # The database is away: the leases run on; the next renewal
                # comes a third of a lease later, well before they end.
                log.warning("renewing leases failed: %s", exc)
