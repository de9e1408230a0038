"""gRPC Submit: receive one message (envelope, then body chunks), rewrite its
envelope, fix its headers, commit it with its recipients, then wake qmgr.

The envelope is rewritten with the routing snapshot in force (it changes
live): the sender through sender_canonical_maps and canonical_maps, each
recipient through recipient_canonical_maps, canonical_maps and
virtual_alias_maps (one recipient may become many; each keeps the address
as received as its original recipient). A virtual alias loop or an
expansion over Postfix's limits refuses the message with "451 4.6.0 Alias
expansion error", as Postfix's cleanup does.

alias_maps: in Postfix, local(8) expands aliases at delivery time and
re-injects forwarded targets. postfleet's local transport only writes
mailboxes, so the same expansion happens here, for recipients the local
transport would deliver: the mail ends where Postfix puts it, but the
expansion uses the snapshot of queueing time. ``/file``, ``|command`` and
``:include:`` targets are not supported: they are dropped with a warning
(an alias left with no address target keeps the alias address itself).

Postfix parameters: myhostname, message_size_limit, maximal_queue_lifetime,
bounce_queue_lifetime; through the snapshot: myorigin, canonical_maps,
sender_canonical_maps, recipient_canonical_maps, virtual_alias_maps,
virtual_alias_recursion_limit, virtual_alias_expansion_limit,
propagate_unmatched_extensions, recipient_delimiter.
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
from postfleet.core.db.errors import storage_full
from postfleet.core.db.queue import NewMessage, NewRecipient
from postfleet.core.maillog import maillog
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.queueid import new_queue_id
from postfleet.core.routing.rewrite import canonical_sender, final_recipients, is_special_target
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpError, SmtpReply

log = logging.getLogger(__name__)

MESSAGES = Counter("postfleet_cleanup_messages_total", "Messages committed to the queue")
FAILURES = Counter("postfleet_cleanup_failures_total", "Submissions that were not committed",
                   ["reason"])


class CleanupService(cleanup_pb2_grpc.CleanupServicer):
    def __init__(
        self, settings: CleanupSettings, writer: QueueWriter, routing: RoutingView | None = None
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.routing = routing or RoutingView()

    async def Submit(
        self, request_iterator: AsyncIterator[cleanup_pb2.SubmitRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> cleanup_pb2.SubmitReply:
        envelope: cleanup_pb2.Envelope | None = None
        chunks: list[bytes] = []
        size = 0
        oversized = False
        async for part in request_iterator:
            if part.HasField("envelope"):
                envelope = part.envelope
            elif not oversized:
                size += len(part.chunk)
                oversized = size > self.settings.message_size_limit
                chunks.append(part.chunk)
        if oversized:
            return _refuse("size", replies.SIZE_EXCEEDED)
        if envelope is None or not envelope.recipients:
            FAILURES.labels("envelope").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "an envelope with at least one recipient must come first")
        assert envelope is not None
        try:
            sender, rewritten = rewrite_envelope(self.routing.snapshot, envelope)
        except SmtpError as exc:
            log.warning("envelope not rewritten: %s", exc)
            return _refuse("rewrite", exc.reply)
        message = self._message(new_queue_id(), envelope, sender, rewritten, b"".join(chunks))
        try:
            await self.writer.write(message)
        except Exception as exc:
            if storage_full(exc):
                # No room: 452 4.3.1, and the client tries again later.
                log.warning("queue store full: %s", exc)
                return _refuse("storage", replies.INSUFFICIENT_STORAGE)
            # Not a refusal: cleanup failed, the client tries again (451 4.3.0).
            FAILURES.labels("database").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"queue file write error: {exc}")
        MESSAGES.inc()
        maillog("cleanup", message.queue_id,
                f"from=<{sender}>, size={len(message.body)}, "
                f"nrcpt={len(message.recipients)} (queue active)")
        return cleanup_pb2.SubmitReply(queue_id=message.queue_id)

    def _message(
        self, queue_id: str, env: cleanup_pb2.Envelope, sender: str,
        rewritten: list[tuple[cleanup_pb2.Recipient, str]], raw: bytes,
    ) -> NewMessage:
        now_ts = time.time()
        now = datetime.fromtimestamp(now_ts, UTC)
        client = env.client
        body = fix_up(
            raw, queue_id=queue_id, myhostname=self.settings.myhostname, helo=client.helo,
            client_name=client.name or "unknown", client_addr=client.address,
            protocol=client.protocol, recipients=[r.address for r in env.recipients],
            now=now_ts, comments=list(client.received_comments),
        )
        lifetime = (self.settings.bounce_queue_lifetime if not env.sender
                    else self.settings.maximal_queue_lifetime)
        return NewMessage(
            queue_id=queue_id, sender=sender, body=body,
            recipients=[NewRecipient(address, r.address, r.orcpt, r.notify)
                        for r, address in rewritten],
            arrived_at=now, expires_at=now + timedelta(seconds=lifetime),
            client_name=client.name, client_addr=client.address, helo=client.helo,
            protocol=client.protocol, sasl_username=client.sasl_username,
            trace_id=env.trace_id, content_filter=env.content_filter, ret=env.ret,
            envid=env.envid,
        )


def _refuse(reason: str, reply: SmtpReply) -> cleanup_pb2.SubmitReply:
    """Refuse the message with the SMTP reply the client must hear."""
    FAILURES.labels(reason).inc()
    return cleanup_pb2.SubmitReply(refusal=reply.to_proto())
def rewrite_envelope(
    snapshot: RoutingSnapshot, env: cleanup_pb2.Envelope
) -> tuple[str, list[tuple[cleanup_pb2.Recipient, str]]]:
    """The sender and (recipient as received, final address) pairs.

    Duplicates -- the same final address for the same original recipient
    and DSN parameters -- are queued once, as Postfix's cleanup does.
    """
    sender = canonical_sender(snapshot, env.sender)
    seen: set[tuple[str, str, str, str]] = set()
    out: list[tuple[cleanup_pb2.Recipient, str]] = []
    for rcpt in env.recipients:
        final = final_recipients(snapshot, rcpt.address)
        dropped = [a for a in final if is_special_target(a)]
        if dropped:
            log.warning("alias targets not supported, ignored for %s: %s", rcpt.address,
                        ", ".join(dropped))
            final = [a for a in final if not is_special_target(a)] or [rcpt.address]
        for address in final:
            key = (rcpt.address, rcpt.orcpt, rcpt.notify, address.lower())
            if key not in seen:
                seen.add(key)
                out.append((rcpt, address))
    return sender, out
