"""Filter jobs off the bus: one durable pull consumer on the transport the
role serves (``postfleet.delivery.filter``), shared by every filter replica.

A job's life: read the message (only the recipients still open at the
job's attempt: a superseded job scans nothing), run the chain, hand the
filtered copy to cleanup (``skip_filter``: no content filter is recorded
for it; address mapping and the checks already ran here), then publish the
job's result and only then ack the job. The original's recipients are
"sent" once cleanup has committed the copy (``250 2.0.0 Ok: queued as
NEW``), so the original leaves the queue only after its filtered copy is
in it. A rejected message bounces with the filter's reply, a deferred one
(a scanner down, cleanup unavailable) is retried by qmgr, a HOLD queues
the copy on hold, DISCARD drops it.

A filter that dies mid-scan never acked its job: JetStream hands it to
another replica after filter_ack_wait (a live one says "in progress" every
half of it), and the message is scanned again. One killed between
cleanup's commit and the result's publish leaves a copy behind and the
next scan makes a second one (at-least-once, as any content filter).

Postfix parameters: none (filter_process_limit, filter_ack_wait,
filter_fetch_timeout are postfleet's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from postfleet.core.bus import subjects
from postfleet.core.bus.connect import ensure_consumer
from postfleet.core.bus.jobs import result_msg_id
from postfleet.core.db.queue import (
    Origin,
    UnreadableContent,
    current_recipients,
    load_body,
    message_origin,
)
from postfleet.core.db.status import Outcome
from postfleet.core.maillog import delivery_line, maillog
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.smtp.replies import SmtpReply
from postfleet.filter.chain import Chain, Decision
from postfleet.filter.settings import FilterSettings

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
RETRY_DELAY_S = 5.0


class FilterJobs:
    def __init__(
        self, settings: FilterSettings, js: JetStreamContext, engine: AsyncEngine,
        cleanup: cleanup_pb2_grpc.CleanupStub, chain: Chain,
    ) -> None:
        self.s = settings
        self.js = js
        self.engine = engine
        self.cleanup = cleanup
        self.chain = chain
        self.transport = settings.filter_transport
        self.tasks: set[asyncio.Task[None]] = set()
        self._psub: JetStreamContext.PullSubscription | None = None

    async def setup(self) -> None:
        durable = subjects.delivery_consumer(self.transport)
        await ensure_consumer(self.js, subjects.DELIVERY_STREAM, durable,
                              subjects.delivery_subject(self.transport), self.s.filter_ack_wait)
        self._psub = await self.js.pull_subscribe_bind(consumer=durable,
                                                       stream=subjects.DELIVERY_STREAM)

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch as many jobs as there are free slots (filter_process_limit),
        each scanned as its own task."""
        assert self._psub is not None
        limit = self.s.filter_process_limit
        while not stopping.is_set():
            if len(self.tasks) >= limit:
                await asyncio.wait(set(self.tasks), return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                msgs = await self._psub.fetch(limit - len(self.tasks),
                                              timeout=self.s.filter_fetch_timeout)
            except TimeoutError:
                continue
            except Exception as exc:  # NATS restarting
                log.warning("fetching filter jobs failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            for m in msgs:
                if stopping.is_set():
                    with contextlib.suppress(Exception):
                        await m.nak()
                    continue
                task = asyncio.create_task(self._one(m))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def drain(self, timeout: float) -> None:
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()

    async def _one(self, msg: Msg) -> None:
        keepalive = asyncio.create_task(self._keepalive(msg))
        try:
            job = delivery_pb2.Job.FromString(msg.data)
            result = await self._job(job)
            if result is None:
                await msg.nak(delay=RETRY_DELAY_S)
            elif await self._publish(job, result):
                await msg.ack()
        except Exception:
            log.exception("filter job failed; it will be redelivered")
        finally:
            keepalive.cancel()

    async def _keepalive(self, msg: Msg) -> None:
        every = max(1.0, self.s.filter_ack_wait / 2)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _job(self, job: delivery_pb2.Job) -> delivery_pb2.Result | None:
        started = time.time()
        try:
            async with self.engine.connect() as conn:
                ids = [r.id for r in job.recipients]
                current = await current_recipients(conn, job.queue_id, ids, job.attempt)
                body = await load_body(conn, job.queue_id) if current else None
                origin = await message_origin(conn, job.queue_id) if body else None
        except UnreadableContent as exc:
            return _result(job, started, [], f"message content unreadable ({exc})")
        except Exception as exc:
            log.warning("cannot read %s (%s); retrying", job.queue_id, exc)
            return None
        if body is None or origin is None:
            return _result(job, started, [])  # gone or superseded: frees the slot
        rcpts = [r for r in job.recipients if r.id in current]
        log.info("scanning %s (%d bytes, attempt %d)", job.queue_id, len(body), job.attempt,
                 extra={"queue_id": job.queue_id, "trace_id": job.trace_id})
        decision = await self.chain.scan(body)
        outcome = await self._act(job, rcpts, origin, decision)
        result = _result(job, started, [(r, outcome) for r in rcpts])
        for rr in result.recipients:
            maillog("filter", job.queue_id, delivery_line(
                address=rr.address, relay=self.transport, delay=time.time() - job.queued_at,
                dsn=rr.dsn, status=Outcome.from_proto(rr.outcome), reply=rr.reply))
        return result

    async def _act(
        self, job: delivery_pb2.Job, rcpts: list[delivery_pb2.JobRecipient], origin: Origin,
        decision: Decision,
    ) -> tuple[str, str]:
        """(dsn, reply) for every recipient of the original."""
        if decision.verb in ("reject", "defer"):
            assert decision.reply is not None
            return decision.reply.status, str(decision.reply)
        if decision.verb == "discard":
            return "2.0.0", f"250 2.0.0 Ok: discarded ({decision.reason})"
        try:
            queue_id = await self._resubmit(job, rcpts, origin, decision)
        except _Refused as exc:
            return exc.reply.status, str(exc.reply)
        held = f", held: {decision.reason}" if decision.verb == "hold" else ""
        return "2.0.0", f"250 2.0.0 Ok: queued as {queue_id}{held}"

    async def _resubmit(
        self, job: delivery_pb2.Job, rcpts: list[delivery_pb2.JobRecipient], origin: Origin,
        decision: Decision,
    ) -> str:
        recipients = ([cleanup_pb2.Recipient(address=decision.redirect)] if decision.redirect
                      else [cleanup_pb2.Recipient(address=r.address, orcpt=r.dsn_orcpt,
                                                  notify=r.notify) for r in rcpts])
        envelope = cleanup_pb2.Envelope(
            sender=job.sender, recipients=recipients, trace_id=job.trace_id,
            client=cleanup_pb2.ClientInfo(
                name=origin.client_name, address=origin.client_addr, helo=origin.helo,
                protocol=origin.protocol, sasl_username=origin.sasl_username),
            skip_filter=True, ret=origin.ret, envid=origin.envid,
            overrides=cleanup_pb2.ReceiveOverrides(no_address_mappings=True,
                                                   no_header_body_checks=True),
            hold=decision.verb == "hold",
        )

        async def parts() -> AsyncIterator[cleanup_pb2.SubmitRequest]:
            yield cleanup_pb2.SubmitRequest(envelope=envelope)
            for i in range(0, len(decision.body), CHUNK):
                yield cleanup_pb2.SubmitRequest(chunk=decision.body[i:i + CHUNK])

        try:
            reply = await self.cleanup.Submit(parts(), timeout=60)
        except grpc.aio.AioRpcError as exc:
            raise _Refused(SmtpReply(451, "4.3.0", f"cleanup unavailable: "
                                     f"{exc.code().name.lower()}")) from exc
        if reply.HasField("refusal"):
            raise _Refused(SmtpReply.from_proto(reply.refusal))
        return str(reply.queue_id)

    async def _publish(self, job: delivery_pb2.Job, result: delivery_pb2.Result) -> bool:
        try:
            await self.js.publish(subjects.RESULTS_SUBJECT, result.SerializeToString(),
                                  headers={"Nats-Msg-Id": result_msg_id(job.job_id)})
        except Exception as exc:
            log.warning("result of %s not published (%s); the job comes back", job.job_id, exc)
            return False
        return True


class _Refused(Exception):
    def __init__(self, reply: SmtpReply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def _result(
    job: delivery_pb2.Job, started: float,
    outcomes: list[tuple[delivery_pb2.JobRecipient, tuple[str, str]]], hold_reason: str = "",
) -> delivery_pb2.Result:
    result = delivery_pb2.Result(
        job_id=job.job_id, queue_id=job.queue_id, attempt=job.attempt,
        transport=job.transport, nexthop=job.nexthop, relay=job.transport,
        started_at=started, finished_at=time.time(), hold_reason=hold_reason)
    for rcpt, (dsn, reply) in outcomes:
        # A filtered copy queued again carries the recipient's DSN request on
        # (NOTIFY, ORCPT): a success notice is for its final delivery.
        requeued = dsn.startswith("2") and " queued as " in reply
        result.recipients.add(id=rcpt.id, address=rcpt.address,
                              outcome=Outcome.from_dsn(dsn).to_proto(), dsn=dsn, reply=reply,
                              diagnostic=reply if not dsn.startswith("2") else "",
                              dsn_passed_on=requeued)
    return result
