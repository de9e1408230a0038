"""ingress-smtp: hand one message to cleanup over gRPC (Postfix's smtpd ->
cleanup stream on private/cleanup).

The call asks for the queue id smtpd has logged ``client=`` with (gRPC
metadata, core.queueid) and streams the envelope first, then the raw content in chunks of at
most 64 KiB, and returns cleanup's queue id, which cleanup sends only once the
message and its recipients are committed (DESIGN invariant 1). Any failure
raises ``SubmitFailed`` carrying the reply for the client: cleanup's own SMTP
reply when it refused the message (``SubmitReply.refusal``, a structured
reply), else Postfix's ``451 4.3.0 Error: queue file write error`` so the
client retries.

A lost answer is asked again, not turned into a duplicate. When cleanup
dies during a call (the connection drops: UNAVAILABLE), its commit may have
landed with the reply unsent; a 451 then would make the client send the
message a second time. So smtpd sends the same message with the same queue
id once more, marked as a resend (``RESEND_METADATA``), waiting for cleanup
to be back within what is left of ``cleanup_timeout``; cleanup answers a
resend of a message it has already queued with that queue id. Only a call
on a connection that was up when it started is resent: a cleanup that could
not be reached never saw the message, and its 451 comes at once. cleanup's
own "not queued" (its transaction failed) is ABORTED, answered at once too.

Postfix parameters: content_filter and receive_override_options (passed on
for cleanup to record and obey); the deadline is ``cleanup_timeout``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.queueid import QUEUE_ID_METADATA, RESEND_METADATA
from postfleet.core.smtp.replies import QUEUE_UNAVAILABLE, SmtpReply
from postfleet.ingress_smtp.metrics import RESENDS, SUBMIT_FAILURES, SUBMIT_SECONDS

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
# Up to this size a message goes in one request (SubmitMessage), beyond it
# as a stream of CHUNK_SIZE pieces (Submit).
WHOLE_MESSAGE_LIMIT = 1024 * 1024
# The call may have reached cleanup and been committed before it died.
AMBIGUOUS = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})


@dataclass(frozen=True)
class ClientInfo:
    name: str
    address: str
    port: int
    helo: str
    protocol: str  # SMTP, ESMTP, ESMTPS, ESMTPSA, ...
    sasl_username: str = ""
    # smtpd's Received: comment lines (TLS session, authenticated sender).
    received_comments: tuple[str, ...] = ()


class SubmitFailed(Exception):
    def __init__(self, reply: SmtpReply, reason: str) -> None:
        super().__init__(f"{reason}: {reply}")
        self.reply = reply
        self.reason = reason


def chunks(body: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


class CleanupClient:
    """Submit messages on one long-lived ``grpc.aio`` channel (made in main)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float) -> None:
        self._channel = channel
        self._stub = cleanup_pb2_grpc.CleanupStub(channel)
        self.timeout = timeout

    async def submit(
        self,
        *,
        sender: str,
        recipients: Sequence[str],
        client: ClientInfo,
        body: bytes,
        trace_id: str,
        body_type: str = "",
        content_filter: str = "",
        overrides: Sequence[str] = (),
        hold: bool = False,
        dsn: Sequence[tuple[str, str]] = (),
        ret: str = "",
        envid: str = "",
        queue_id: str = "",
    ) -> str:
        """``dsn``: each recipient's (NOTIFY, ORCPT), in order (none: not given)."""
        notify_orcpt = list(dsn) or [("", "")] * len(recipients)
        envelope = cleanup_pb2.Envelope(
            sender=sender,
            recipients=[cleanup_pb2.Recipient(address=r, notify=n, orcpt=o)
                        for r, (n, o) in zip(recipients, notify_orcpt, strict=True)],
            ret=ret, envid=envid,
            client=cleanup_pb2.ClientInfo(
                name=client.name, address=client.address, port=client.port,
                helo=client.helo, protocol=client.protocol,
                sasl_username=client.sasl_username,
                received_comments=list(client.received_comments),
            ),
            trace_id=trace_id,
            body_type=body_type,
            content_filter=content_filter,
            overrides=cleanup_pb2.ReceiveOverrides(
                no_address_mappings="no_address_mappings" in overrides,
                no_header_body_checks="no_header_body_checks" in overrides,
                no_milters="no_milters" in overrides,
            ),
            hold=hold,
        )

        started = time.monotonic()
        try:
            reply = await self._call(envelope, body, queue_id, trace_id, started)
        finally:
            SUBMIT_SECONDS.observe(time.monotonic() - started)
        if reply.HasField("refusal"):
            SUBMIT_FAILURES.labels("refused").inc()
            raise SubmitFailed(SmtpReply.from_proto(reply.refusal), "refused")
        if not reply.queue_id:
            SUBMIT_FAILURES.labels("no_queue_id").inc()
            raise SubmitFailed(QUEUE_UNAVAILABLE, "no queue id")
        return str(reply.queue_id)

    async def _call(self, envelope: cleanup_pb2.Envelope, body: bytes, queue_id: str,
                    trace_id: str, started: float) -> cleanup_pb2.SubmitReply:
        """One Submit, and one resend of it when cleanup's answer was lost."""
        was_up = self._channel.get_state() == grpc.ChannelConnectivity.READY
        try:
            return await self._send(envelope, body, queue_id, self.timeout)
        except grpc.aio.AioRpcError as exc:
            left = self.timeout - (time.monotonic() - started)
            if not (queue_id and was_up and exc.code() in AMBIGUOUS and left > 0):
                raise _failed(exc, trace_id) from exc
            log.warning("cleanup Submit of %s lost (%s %s): sending it again", queue_id,
                        exc.code().name, exc.details(), extra={"trace_id": trace_id})
            RESENDS.inc()
        except Exception as exc:  # channel closed, serialisation, ...: never a 250
            raise _failed(exc, trace_id) from exc
        try:
            return await self._send(envelope, body, queue_id, left, resend=True)
        except Exception as exc:
            raise _failed(exc, trace_id) from exc

    async def _send(self, envelope: cleanup_pb2.Envelope, body: bytes, queue_id: str,
                    timeout: float, resend: bool = False) -> cleanup_pb2.SubmitReply:
        metadata: list[tuple[str, str]] = [(QUEUE_ID_METADATA, queue_id)] if queue_id else []
        if resend:
            metadata.append((RESEND_METADATA, "1"))
        # A resend waits for cleanup to be back (restarted by the launcher,
        # or another replica behind the Service) instead of failing at once.
        if len(body) <= WHOLE_MESSAGE_LIMIT:
            return await self._stub.SubmitMessage(
                cleanup_pb2.WholeMessage(envelope=envelope, body=body), timeout=timeout,
                metadata=metadata or None, wait_for_ready=resend)

        async def requests() -> AsyncIterator[cleanup_pb2.SubmitRequest]:
            yield cleanup_pb2.SubmitRequest(envelope=envelope)
            for piece in chunks(body):
                yield cleanup_pb2.SubmitRequest(chunk=piece)

        return await self._stub.Submit(requests(), timeout=timeout, metadata=metadata or None,
                                       wait_for_ready=resend)


def _failed(exc: Exception, trace_id: str) -> SubmitFailed:
    """The 451 for a Submit that did not commit (or whose answer stayed lost)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        reason = exc.code().name.lower()
        log.warning("cleanup Submit failed: %s %s", exc.code().name, exc.details(),
                    extra={"trace_id": trace_id})
    else:
        reason = "error"
        log.warning("cleanup Submit failed", exc_info=exc, extra={"trace_id": trace_id})
    SUBMIT_FAILURES.labels(reason).inc()
    return SubmitFailed(QUEUE_UNAVAILABLE, reason)
