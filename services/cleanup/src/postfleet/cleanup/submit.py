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

Content filter and checks (Postfix's cleanup): the message records the
content filter its submitter chose (a listener's content_filter, sendmail's)
unless a FILTER action of the header/body checks overrides it, or none at
all when it comes back from its filter (``skip_filter``). header_checks,
mime_header_checks, nested_header_checks and body_checks run on the message
as queued (``postfleet.core.checks``): REJECT refuses it with the reply the
SMTP client hears at end of DATA, DISCARD answers as if queued and drops it,
HOLD queues it on hold, REDIRECT replaces its recipients. The submitter's
receive_override_options turn off address mapping (no_address_mappings) and
the checks (no_header_body_checks).

A resend (smtpd lost the answer to an earlier call: cleanup died during
it) of a message already committed under its queue id is answered with that
queue id and nothing else is done: the client hears 250 once and the message
is queued once. A resend of one that never committed goes through as new.
cleanup's own failure to commit (the queue store's transaction failed)
answers ABORTED, so smtpd knows nothing was queued and answers 451 at once;
UNAVAILABLE is left to the transport (cleanup gone mid-call).

Then non_smtpd_milters for local submissions (milters.py), and last DKIM
signing or ARC sealing (signing.py): the message as queued is the message
as it leaves.

Postfix parameters: myhostname, message_size_limit, maximal_queue_lifetime,
bounce_queue_lifetime, header_checks, mime_header_checks,
nested_header_checks, body_checks, body_checks_size_limit; through the
submitter: content_filter, receive_override_options; through the snapshot: myorigin, canonical_maps,
sender_canonical_maps, recipient_canonical_maps, virtual_alias_maps,
virtual_alias_recursion_limit, virtual_alias_expansion_limit,
propagate_unmatched_extensions, recipient_delimiter, mynetworks;
non_smtpd_milters (milters.py);
postfleet's own: dkim_key_directory, arc_seal_domain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import Counter

from postfleet.cleanup.headers import fix_up
from postfleet.cleanup.milters import NonSmtpdMilters
from postfleet.cleanup.queue_writer import QueueWriter
from postfleet.cleanup.settings import CleanupSettings
from postfleet.core.checks.message import Checks, Verdict
from postfleet.core.db.errors import storage_full
from postfleet.core.db.queue import NewMessage, NewRecipient
from postfleet.core.db.status import MessageState
from postfleet.core.maillog import maillog
from postfleet.core.proto.cleanup.v1 import cleanup_pb2, cleanup_pb2_grpc
from postfleet.core.queueid import (
    QUEUE_ID_METADATA,
    RESEND_METADATA,
    is_queue_id,
    new_queue_id,
)
from postfleet.core.routing.rewrite import canonical_sender, final_recipients, is_special_target
from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.routing.store import RoutingView
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpError, SmtpReply

if TYPE_CHECKING:
    from postfleet.cleanup.signing import Signer

log = logging.getLogger(__name__)

MESSAGES = Counter("postfleet_cleanup_messages_total", "Messages committed to the queue")
RESENT = Counter("postfleet_cleanup_resent_total",
                 "Resends answered with the queue id an earlier, lost answer carried")
FAILURES = Counter("postfleet_cleanup_failures_total", "Submissions that were not committed",
                   ["reason"])


class CleanupService(cleanup_pb2_grpc.CleanupServicer):
    def __init__(
        self, settings: CleanupSettings, writer: QueueWriter, routing: RoutingView | None = None
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.routing = routing or RoutingView()
        self.checks = Checks(settings)
        self.milters = NonSmtpdMilters(settings)
        self.signer = _signer(settings)

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
        return await self._accept(envelope, b"".join(chunks), context)

    async def SubmitMessage(
        self, request: cleanup_pb2.WholeMessage, context: grpc.aio.ServicerContext[Any, Any],
    ) -> cleanup_pb2.SubmitReply:
        if len(request.body) > self.settings.message_size_limit:
            return _refuse("size", replies.SIZE_EXCEEDED)
        return await self._accept(request.envelope if request.HasField("envelope") else None,
                                  request.body, context)

    async def _accept(
        self, envelope: cleanup_pb2.Envelope | None, body: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> cleanup_pb2.SubmitReply:
        """Rewrite, check, sign and commit one message (both Submit forms)."""
        if envelope is None or not envelope.recipients:
            FAILURES.labels("envelope").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "an envelope with at least one recipient must come first")
        assert envelope is not None
        queue_id, resend = _requested(context)
        if resend and await self._already_queued(queue_id, context):
            return cleanup_pb2.SubmitReply(queue_id=queue_id)
        try:
            if envelope.overrides.no_address_mappings:
                sender, rewritten = envelope.sender, unmapped(envelope)
            else:
                sender, rewritten = rewrite_envelope(self.routing.snapshot, envelope)
        except SmtpError as exc:
            log.warning("envelope not rewritten: %s", exc)
            return _refuse("rewrite", exc.reply)
        message = self._message(queue_id, envelope, sender, rewritten, body)
        if self.checks and not envelope.overrides.no_header_body_checks:
            verdict = await self._check(message)
            _log_actions(verdict, message, envelope)
            if verdict.reject is not None:
                return _refuse("content", verdict.reject)
            if verdict.discard:
                MESSAGES.inc()
                return cleanup_pb2.SubmitReply(queue_id=message.queue_id)
            message = _applied(message, verdict, envelope.skip_filter)
        if self.milters.applies(envelope):
            milted = await self.milters.run(message)
            if milted.refusal is not None:
                return _refuse("milter", milted.refusal)
            if milted.discard:
                maillog("cleanup", message.queue_id, "milter-discard: END-OF-MESSAGE from "
                        "local; milter triggers DISCARD action")
                MESSAGES.inc()
                return cleanup_pb2.SubmitReply(queue_id=message.queue_id)
            message = milted.message
        if self.signer:
            signed = self.signer.process(
                self.routing.snapshot, envelope, message.queue_id, message.body,
                [r.address for r in message.recipients], message.content_filter)
            message = dataclasses.replace(message, body=signed)
        try:
            await self.writer.write(message)
        except Exception as exc:
            if storage_full(exc):
                # No room: 452 4.3.1, and the client tries again later.
                log.warning("queue store full: %s", exc)
                return _refuse("storage", replies.INSUFFICIENT_STORAGE)
            # Not a refusal: cleanup failed, the client tries again (451 4.3.0).
            FAILURES.labels("database").inc()
            await context.abort(grpc.StatusCode.ABORTED, f"queue file write error: {exc}")
        MESSAGES.inc()
        # The "from=<…>, size=…, nrcpt=…" line is qmgr's, as in Postfix.
        return cleanup_pb2.SubmitReply(queue_id=message.queue_id)

    async def _already_queued(self, queue_id: str,
                              context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        try:
            committed = await self.writer.committed(queue_id)
        except Exception as exc:
            FAILURES.labels("database").inc()
            await context.abort(grpc.StatusCode.ABORTED, f"queue file lookup error: {exc}")
        if committed:
            log.info("resent after a lost answer: already queued",
                     extra={"queue_id": queue_id})
            RESENT.inc()
        return committed

    async def _check(self, message: NewMessage) -> Verdict:
        # Large messages are scanned off the event loop: other submissions go on.
        if len(message.body) > CHECK_INLINE_LIMIT:
            return await asyncio.to_thread(self.checks.run, message.body)
        return self.checks.run(message.body)

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
            recipients=[NewRecipient(address, r.address, r.orcpt, r.notify.upper())
                        for r, address in rewritten],
            arrived_at=now, expires_at=now + timedelta(seconds=lifetime),
            client_name=client.name, client_addr=client.address, helo=client.helo,
            protocol=client.protocol, sasl_username=client.sasl_username,
            trace_id=env.trace_id,
            content_filter="" if env.skip_filter else env.content_filter, ret=env.ret,
            envid=env.envid, state=MessageState.HOLD if env.hold else MessageState.INCOMING,
        )


CHECK_INLINE_LIMIT = 64 * 1024


def _signer(settings: CleanupSettings) -> Signer | None:
    """DKIM signing and ARC sealing when dkim_key_directory is set. Only a
    cleanup that signs imports dkimpy, cryptography and PyNaCl (about
    10 MiB of memory that a cleanup without keys would carry for nothing)."""
    if not settings.dkim_key_directory:
        return None
    from postfleet.cleanup.signing import Signer

    return Signer(settings.dkim_key_directory, settings.arc_seal_domain, settings.myhostname)


def _applied(message: NewMessage, verdict: Verdict, skip_filter: bool) -> NewMessage:
    """The message as the checks left it: edited content, on hold, redirected
    (one recipient, as Postfix's qmgr redirects), another content filter."""
    changes: dict[str, Any] = {"body": verdict.body}
    if verdict.hold:
        changes["state"] = MessageState.HOLD
    if verdict.filter and not skip_filter:
        changes["content_filter"] = verdict.filter
    if verdict.redirect:
        first = message.recipients[0]
        changes["recipients"] = [NewRecipient(verdict.redirect, first.orig_rcpt)]
    return dataclasses.replace(message, **changes)


def _log_actions(verdict: Verdict, message: NewMessage, env: cleanup_pb2.Envelope) -> None:
    """Postfix's cleanup_act_log: ``reject: header Subject: ... from
    host[addr]; from=<s> to=<r> proto=ESMTP helo=<h>: text``."""
    client = env.client
    origin = f"{client.name or 'unknown'}[{client.address}]" if client.address else "local"
    rcpt = message.recipients[0].address if len(message.recipients) == 1 else ""
    for action in verdict.actions:
        line = (f"{action.word}: {action.context} {action.content} from {origin}; "
                f"from=<{message.sender}>" + (f" to=<{rcpt}>" if rcpt else ""))
        if client.protocol:
            line += f" proto={client.protocol}"
        if client.helo:
            line += f" helo=<{client.helo}>"
        maillog("cleanup", message.queue_id, f"{line}: {action.text}" if action.text else line)


def _refuse(reason: str, reply: SmtpReply) -> cleanup_pb2.SubmitReply:
    """Refuse the message with the SMTP reply the client must hear."""
    FAILURES.labels(reason).inc()
    return cleanup_pb2.SubmitReply(refusal=reply.to_proto())
def unmapped(env: cleanup_pb2.Envelope) -> list[tuple[cleanup_pb2.Recipient, str]]:
    """receive_override_options = no_address_mappings: each recipient as it
    came (duplicates still queued once)."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for rcpt in env.recipients:
        key = (rcpt.address.lower(), rcpt.orcpt, rcpt.notify)
        if key not in seen:
            seen.add(key)
            out.append((rcpt, rcpt.address))
    return out


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


def _requested(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, bool]:
    """The id smtpd asked for (it has logged client= with it), else a new one;
    and whether this is a resend of it."""
    queue_id, resend = "", False
    for key, value in context.invocation_metadata() or ():
        if key == QUEUE_ID_METADATA and isinstance(value, str) and is_queue_id(value):
            queue_id = value
        elif key == RESEND_METADATA:
            resend = True
    return (queue_id, resend) if queue_id else (new_queue_id(), False)
