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
from postfleet.core.queueid import QUEUE_ID_METADATA
from postfleet.core.smtp.replies import QUEUE_UNAVAILABLE, SmtpReply
from postfleet.ingress_smtp.metrics import SUBMIT_FAILURES, SUBMIT_SECONDS

log = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024
# Up to this size a message goes in one request (SubmitMessage), beyond it
# as a stream of CHUNK_SIZE pieces (Submit).
WHOLE_MESSAGE_LIMIT = 1024 * 1024


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

        async def requests() -> AsyncIterator[cleanup_pb2.SubmitRequest]:
            yield cleanup_pb2.SubmitRequest(envelope=envelope)
            for piece in chunks(body):
                yield cleanup_pb2.SubmitRequest(chunk=piece)

        started = time.monotonic()
        metadata = ((QUEUE_ID_METADATA, queue_id),) if queue_id else None
        try:
            if len(body) <= WHOLE_MESSAGE_LIMIT:
                reply = await self._stub.SubmitMessage(
                    cleanup_pb2.WholeMessage(envelope=envelope, body=body),
                    timeout=self.timeout, metadata=metadata)
            else:
                reply = await self._stub.Submit(requests(), timeout=self.timeout,
                                                metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            reason = exc.code().name.lower()
            SUBMIT_FAILURES.labels(reason).inc()
            log.warning("cleanup Submit failed: %s %s", exc.code().name, exc.details(),
                        extra={"trace_id": trace_id})
            raise SubmitFailed(QUEUE_UNAVAILABLE, reason) from exc
        except Exception as exc:  # channel closed, serialisation, ...: never a 250
            SUBMIT_FAILURES.labels("error").inc()
            log.warning("cleanup Submit failed", exc_info=True, extra={"trace_id": trace_id})
            raise SubmitFailed(QUEUE_UNAVAILABLE, "error") from exc
        finally:
            SUBMIT_SECONDS.observe(time.monotonic() - started)
        if reply.HasField("refusal"):
            SUBMIT_FAILURES.labels("refused").inc()
            raise SubmitFailed(SmtpReply.from_proto(reply.refusal), "refused")
        if not reply.queue_id:
            SUBMIT_FAILURES.labels("no_queue_id").inc()
            raise SubmitFailed(QUEUE_UNAVAILABLE, "no queue id")
        return str(reply.queue_id)
