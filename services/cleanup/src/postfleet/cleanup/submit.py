"""gRPC Submit: receive one message (envelope, then body chunks), fix its
headers, commit it with its recipients, then wake qmgr.

Postfix parameters: myhostname, message_size_limit, maximal_queue_lifetime,
bounce_queue_lifetime.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from prometheus_client import Counter

from postfleet.cleanup.headers import fix_up
from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.core.db.models import MessageState, RecipientStatus
from postfleet.core.maillog import maillog
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.queueid import new_queue_id

log = logging.getLogger(__name__)

MESSAGES = Counter("postfleet_cleanup_messages_total", "Messages committed to the queue")
FAILURES = Counter("postfleet_cleanup_failures_total", "Submissions that were not committed",
                   ["reason"])


class CleanupService(cleanup_pb2_grpc.CleanupServicer):
    def __init__(self, settings: CleanupSettings, writer: QueueWriter) -> None:
        self.settings = settings
        self.writer = writer

    async def Submit(
        self, request_iterator: AsyncIterator[cleanup_pb2.SubmitRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> cleanup_pb2.SubmitReply:
        envelope: cleanup_pb2.Envelope | None = None
        chunks: list[bytes] = []
        size = 0
        async for part in request_iterator:
            if part.HasField("envelope"):
                envelope = part.envelope
            else:
                size += len(part.chunk)
                if size > self.settings.message_size_limit:
                    FAILURES.labels("size").inc()
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        "552 5.3.4 Message size exceeds fixed limit")
                chunks.append(part.chunk)
        if envelope is None or not envelope.recipients:
            FAILURES.labels("envelope").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "an envelope with at least one recipient must come first")
        assert envelope is not None
        queue_id = new_queue_id()
        message, recipients = self._rows(queue_id, envelope, b"".join(chunks))
        try:
            await self.writer.write(message, recipients)
        except Exception as exc:
            FAILURES.labels("database").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"queue file write error: {exc}")
        MESSAGES.inc()
        maillog("cleanup", queue_id,
                f"from=<{envelope.sender}>, size={len(message['body'])}, "
                f"nrcpt={len(recipients)} (queue active)")
        return cleanup_pb2.SubmitReply(queue_id=queue_id)

    def _rows(
        self, queue_id: str, env: cleanup_pb2.Envelope, raw: bytes
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        now_ts = time.time()
        now = datetime.fromtimestamp(now_ts, UTC)
        client = env.client
        body = fix_up(
            raw, queue_id=queue_id, myhostname=self.settings.myhostname, helo=client.helo,
            client_name=client.name or "unknown", client_addr=client.address,
            protocol=client.protocol, recipients=[r.address for r in env.recipients],
            now=now_ts,
        )
        lifetime = (self.settings.bounce_queue_lifetime if not env.sender
                    else self.settings.maximal_queue_lifetime)
        message = {
            "queue_id": queue_id, "sender": env.sender, "size": len(body), "body": body,
            "client_name": client.name, "client_addr": client.address, "helo": client.helo,
            "protocol": client.protocol, "sasl_username": client.sasl_username,
            "trace_id": env.trace_id, "content_filter": env.content_filter, "ret": env.ret,
            "envid": env.envid, "state": MessageState.INCOMING, "arrived_at": now,
            "expires_at": now + timedelta(seconds=lifetime),
        }
        recipients = [
            {"queue_id": queue_id, "address": r.address, "orig_rcpt": r.address,
             "orcpt": r.orcpt, "notify": r.notify, "status": RecipientStatus.PENDING,
             "transport": "", "nexthop": "", "attempts": 0, "next_attempt_at": now,
             "dsn_status": "", "last_reply": ""}
            for r in env.recipients
        ]
        return message, recipients
