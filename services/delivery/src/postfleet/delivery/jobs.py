"""Delivery jobs off the bus: the JetStream pull consumer loop and one job's life.

Each transport has one durable pull consumer (``delivery-<transport>``)
shared by every delivery replica, so JetStream spreads jobs across them. A
consumer fetches jobs in batches no larger than the free job slots
(default_process_limit per process), runs each as its own task, and for each
job: reads the message, delivers it, publishes the result to
``postfleet.results`` (de-duplicated by ``Nats-Msg-Id: <job_id>/result``),
and only once JetStream has acknowledged that publish, acks the job. A job
whose result cannot be published stays unacknowledged and is redelivered
after delivery_ack_wait (at-least-once: the recipient may see it twice, no
recipient is lost; a live job tells JetStream it is in progress every half
delivery_ack_wait, so only a dead replica's jobs come back). A job speaks
only for its recipients that are still open at its attempt: one whose
message is gone, or that a newer attempt superseded (its qmgr died and the
work was retaken), delivers nothing and publishes an empty result, which
frees its destination slot. A message whose content cannot be read is put
on hold through its result (``hold_reason``), never retried as is.

Stopping (SIGTERM): no new fetches, the fetch in flight ends within
delivery_fetch_timeout and whatever it brings is nak'ed for another replica;
jobs in hand finish within the drain timeout, the rest are abandoned
unacknowledged and redelivered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Protocol

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import ensure_consumer
from postfleet.core.bus.jobs import result_msg_id
from postfleet.core.db.queue import UnreadableContent
from postfleet.core.db.status import Outcome
from postfleet.core.maillog import delivery_line, maillog
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery import metrics
from postfleet.delivery.outcome import Delivery, outcome
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import MessageStore, StoredMessage

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
# A job whose message could not be read (database down) comes back after this.
STORE_RETRY_DELAY_S = 5.0


class Transport(Protocol):
    program: str  # the Postfix daemon it stands for, in the mail log

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery: ...


class Slots:
    """How many jobs this process may run at once (default_process_limit),
    shared by every transport's consumer first come, first served: a consumer
    waiting for a slot is served before a later one, so a busy transport
    cannot starve an idle one."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[asyncio.Future[int], int]] = deque()

    async def reserve(self, want: int) -> int:
        """Wait for a free slot, then take up to ``want`` of the free ones."""
        if not self._waiters and self.used < self.limit:
            return self._take(want)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        entry = (future, want)
        self._waiters.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self.release(future.result())  # granted just as we were cancelled
            raise

    def _take(self, want: int) -> int:
        count = min(want, self.limit - self.used)
        self.used += count
        return count

    def release(self, count: int = 1) -> None:
        if count:
            self.used -= count
        while self._waiters and self.used < self.limit:
            future, want = self._waiters.popleft()
            if not future.done():
                future.set_result(self._take(want))


class JobRunner:
    """One job: read, deliver, publish the result, ack."""

    def __init__(
        self,
        js: JetStreamContext,
        store: MessageStore,
        transports: Mapping[str, Transport],
        settings: DeliverySettings,
    ) -> None:
        self.js = js
        self.store = store
        self.transports = transports
        self.result_retry_time = settings.delivery_result_retry_time
        self.keepalive_s = max(1.0, settings.delivery_ack_wait / 2)

    async def run(self, msg: Msg, transport_name: str) -> None:
        try:
            job = delivery_pb2.Job.FromString(msg.data)
        except DecodeError:
            log.error("undecodable delivery job on %s: dropped", msg.subject)
            metrics.JOBS.labels(transport_name, "bad").inc()
            await _quietly(msg.term())
            return
        started = time.time()
        keepalive = _Keepalive(msg, self.keepalive_s)
        metrics.JOBS_ACTIVE.inc()
        try:
            done = await self._run(msg, job, transport_name, started)
        finally:
            keepalive.cancel()
            metrics.JOBS_ACTIVE.dec()
        metrics.JOBS.labels(transport_name, done).inc()
        metrics.JOB_SECONDS.labels(transport_name).observe(time.time() - started)

    async def _run(self, msg: Msg, job: delivery_pb2.Job, name: str, started: float) -> str:
        extra = {"queue_id": job.queue_id, "trace_id": job.trace_id}
        try:
            message, current = await self.store.load(job)
        except UnreadableContent as exc:
            log.error("message %s cannot be read (%s): it goes on hold", job.queue_id, exc,
                      extra=extra)
            reason = f"message content unreadable ({exc})"
            return await self._finish(msg, job, _empty_result(job, name, started, reason))
        except Exception:
            log.exception("cannot read message %s; retrying later", job.queue_id, extra=extra)
            await _quietly(msg.nak(delay=STORE_RETRY_DELAY_S))
            return "store_error"
        if message is None:
            # Gone, or superseded by a newer attempt: deliver nothing, but
            # say so, which frees the job's destination slot.
            log.info("job %s speaks for no recipient any more; nothing sent", job.job_id,
                     extra=extra)
            return await self._finish(msg, job, _empty_result(job, name, started), "stale")
        if len(current) < len(job.recipients):
            job = _narrowed(job, current)

        transport = self.transports[name]
        try:
            delivery = await transport.deliver(job, message)
        except Exception:
            log.exception("%s transport failed on %s", name, job.queue_id, extra=extra)
            delivery = Delivery.all(len(job.recipients),
                                    outcome("4.3.0", "mail transport unavailable"))
        result = _result(job, name, delivery, started, time.time())
        _log_result(transport.program, job, result)
        return await self._finish(msg, job, result)

    async def _finish(self, msg: Msg, job: delivery_pb2.Job, result: delivery_pb2.Result,
                      done: str = "done") -> str:
        """Publish the result, then ack the job (at-least-once)."""
        if not await self._publish(job, result):
            log.warning("result of job %s not published; the job will be redelivered",
                        job.job_id, extra={"queue_id": job.queue_id, "trace_id": job.trace_id})
            return "unpublished"
        await _quietly(msg.ack())
        return "hold" if result.hold_reason else done

    async def _publish(self, job: delivery_pb2.Job, result: delivery_pb2.Result) -> bool:
        payload = result.SerializeToString()
        headers = {"Nats-Msg-Id": result_msg_id(job.job_id)} if job.job_id else None
        deadline = time.monotonic() + self.result_retry_time
        pause = 0.1
        while True:
            try:
                await self.js.publish(
                    subjects.RESULTS_SUBJECT, payload, timeout=PUBLISH_TIMEOUT_S, headers=headers
                )
                return True
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    log.warning("publishing result of %s failed: %r", job.job_id, exc)
                    return False
            await asyncio.sleep(pause)  # NATS restarting: back off, not a poll
            pause = min(pause * 2, 2.0)


def _result(
    job: delivery_pb2.Job, transport: str, delivery: Delivery, started: float, finished: float
) -> delivery_pb2.Result:
    result = delivery_pb2.Result(
        job_id=job.job_id, queue_id=job.queue_id, attempt=job.attempt,
        transport=job.transport or transport, nexthop=job.nexthop, relay=delivery.relay,
        started_at=started, finished_at=finished, final_delivery=delivery.final,
    )
    for rcpt, out in zip(job.recipients, delivery.outcomes, strict=True):
        result.recipients.add(
            id=rcpt.id, address=rcpt.address, outcome=out.status.to_proto(), dsn=out.dsn,
            reply=out.reply, diagnostic=out.diagnostic, dsn_passed_on=out.passed_on,
        )
    return result


def _empty_result(
    job: delivery_pb2.Job, transport: str, started: float, hold_reason: str = ""
) -> delivery_pb2.Result:
    return delivery_pb2.Result(
        job_id=job.job_id, queue_id=job.queue_id, attempt=job.attempt,
        transport=job.transport or transport, nexthop=job.nexthop, started_at=started,
        finished_at=time.time(), hold_reason=hold_reason)


def _narrowed(job: delivery_pb2.Job, current: set[int]) -> delivery_pb2.Job:
    """The job for only the recipients it still speaks for."""
    narrow = delivery_pb2.Job()
    narrow.CopyFrom(job)
    del narrow.recipients[:]
    narrow.recipients.extend(r for r in job.recipients if r.id in current)
    return narrow


def _log_result(program: str, job: delivery_pb2.Job, result: delivery_pb2.Result) -> None:
    since = job.queued_at or result.started_at
    delay = max(0.0, result.finished_at - since)
    stages = metrics.STAGE_DELAYS.get(program)
    for rcpt, rr in zip(job.recipients, result.recipients, strict=True):
        status = Outcome.from_proto(rr.outcome)
        metrics.RECIPIENTS.labels(result.transport, status).inc()
        metrics.DELAY.labels(result.transport, status).observe(delay)
        if stages is not None:
            stages.labels("queue_manager").observe(max(0.0, result.started_at - since))
            stages.labels("transmission").observe(
                max(0.0, result.finished_at - result.started_at))
        maillog(program, job.queue_id, delivery_line(
            address=rr.address, orig=rcpt.orcpt, relay=result.relay, delay=delay,
            dsn=rr.dsn, status=status, reply=rr.reply,
        ))


async def _quietly(coro: Awaitable[object]) -> None:
    """Acks and naks are best effort: a lost one only means a redelivery."""
    try:
        await coro
    except Exception as exc:
        log.warning("acknowledging a job failed: %r", exc)


class _Keepalive:
    """Tells JetStream a long job is still being worked on (+WPI), so it is
    not handed to another replica while this one delivers."""

    def __init__(self, msg: Msg, every: float) -> None:
        self.msg = msg
        self.every = every
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            every, self._fire
        )

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(_quietly(self.msg.in_progress()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._timer = loop.call_later(self.every, self._fire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class JobConsumer:
    """The fetch loop of one transport's durable pull consumer; its jobs go
    to ``runner``, on the same JetStream."""

    def __init__(
        self, transport: str, runner: JobRunner, slots: Slots, settings: DeliverySettings
    ) -> None:
        self.js = runner.js
        self.transport = transport
        self.runner = runner
        self.slots = slots
        self.batch = settings.delivery_fetch_batch
        self.fetch_timeout = settings.delivery_fetch_timeout
        self.ack_wait = settings.delivery_ack_wait
        self.durable = subjects.delivery_consumer(transport)
        self.subject = subjects.delivery_subject(transport)
        self.tasks: set[asyncio.Task[None]] = set()
        self._psub: JetStreamContext.PullSubscription | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._fetching = False
        self._naks: set[asyncio.Task[None]] = set()

    async def setup(self) -> None:
        """Create the durable consumer (idempotent) and bind to it."""
        await ensure_consumer(
            self.js, subjects.DELIVERY_STREAM, self.durable, self.subject, self.ack_wait
        )
        if self._psub is None:
            self._psub = await self.js.pull_subscribe_bind(
                consumer=self.durable, stream=subjects.DELIVERY_STREAM
            )

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        """Stop fetching. A fetch in flight is left to end (its jobs are nak'ed);
        a loop waiting for a slot or backing off is cancelled at once."""
        self._stopping = True
        if self._loop_task is not None and not self._fetching:
            self._loop_task.cancel()

    async def wait_stopped(self) -> None:
        """Until the fetch loop has ended; then leave the consumer's inbox."""
        if self._loop_task is not None:
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        if self._psub is not None:
            psub, self._psub = self._psub, None
            await _quietly(psub.unsubscribe())

    async def _loop(self) -> None:
        assert self._psub is not None
        pause = 0.5
        # Idle, a consumer long-polls for one job without holding a slot, and
        # takes a slot (first come, first served) once the job is in hand:
        # idle transports never hold the slots a busy one needs. Busy, it
        # takes slots first and asks for as many jobs, twice as many as the
        # last fetch brought (up to delivery_fetch_batch).
        ask = 1
        while not self._stopping:
            reserved = await self.slots.reserve(ask) if ask > 1 else 0
            want = max(reserved, 1)
            msgs: list[Msg] = []
            error: Exception | None = None
            self._fetching = True
            try:
                msgs = await self._psub.fetch(batch=want, timeout=self.fetch_timeout)
            except TimeoutError:
                pass  # an idle queue
            except Exception as exc:
                error = exc
            finally:
                self._fetching = False
                self.slots.release(max(0, reserved - len(msgs)))
            if error is not None:
                log.warning("fetching %s jobs failed: %r", self.transport, error)
                await asyncio.sleep(pause)  # the bus is down or restarting
                pause = min(pause * 2, 5.0)
                try:
                    await self.setup()  # the consumer may have been lost with the stream
                except Exception as exc:
                    log.debug("re-creating consumer %s failed: %r", self.durable, exc)
                continue
            pause = 0.5
            ask = min(self.batch, 2 * len(msgs)) if msgs else 1
            if msgs and not reserved and not self._stopping:
                if not await self._slot_for(msgs[0]):
                    break
            if self._stopping:
                for msg in msgs:  # fetched too late: another replica takes them now
                    await _quietly(msg.nak())
                self.slots.release(len(msgs))
                break
            for msg in msgs:
                task = asyncio.get_running_loop().create_task(
                    self.runner.run(msg, self.transport)
                )
                self.tasks.add(task)
                task.add_done_callback(self._job_done)

    async def _slot_for(self, msg: Msg) -> bool:
        """Wait for a slot for a job fetched without one, telling JetStream
        the job is in hand meanwhile. False when stopped while waiting (the
        job is then handed back)."""
        keepalive = _Keepalive(msg, self.runner.keepalive_s)
        try:
            await self.slots.reserve(1)
            return True
        except asyncio.CancelledError:
            # stop() cancels a loop that is not fetching: hand the job back.
            task = asyncio.get_running_loop().create_task(_quietly(msg.nak()))
            self._naks.add(task)
            task.add_done_callback(self._naks.discard)
            raise
        finally:
            keepalive.cancel()

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slots.release(1)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery job crashed: %r", exc, exc_info=exc)
