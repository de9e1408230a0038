"""The local and virtual transports: Postfix's local(8) and virtual(8), Maildir only.

Alias expansion, .forward files and luser_relay happen elsewhere (routing
rewrites addresses before they are queued); these agents only write mailboxes.

local: the user is the recipient's local part, lowercased, with its address
extension removed (recipient_delimiter: any of its characters starts the
extension). Its mailbox is ``<local_mail_root>/<user>/Maildir/``. Postfix asks
the password database whether the user exists; here a user exists

- when local_recipients is set: exactly when listed (the directory is made);
- otherwise, local_user_policy = existing (the default): when the directory
  ``<local_mail_root>/<user>`` exists — create: always (the directory is made).

Anyone else is bounced 5.1.1 ``unknown user: "x"``, as local(8) does.

virtual: the mailbox is ``<virtual_mailbox_base>/<domain>/<user>/`` (domain
and user lowercased, the extension removed); virtual_user_policy says
whether a missing one is made (create, the default: routing has already
checked virtual_mailbox_maps) or bounced 5.1.1 (existing).

Both add ``Return-Path: <sender>`` and ``Delivered-To: <recipient>`` (the
recipient lowercased, extension kept) and refuse a message that already
carries that Delivered-To: — 5.4.6 "mail forwarding loop for …". Delivered
mail is reported 2.0.0 "delivered to maildir", relay=local / relay=virtual.
Files are written by the delivery process's own user (no setuid here).

Postfix parameters: recipient_delimiter, mailbox_size_limit,
virtual_mailbox_base, virtual_mailbox_limit, myhostname (maildir file
names). postfleet's own: local_mail_root, local_user_policy,
local_recipients, virtual_user_policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.maildir import (
    MaildirError,
    delivered_to,
    delivery_headers,
    write_maildir,
)
from postfleet.delivery.outcome import Delivery, Outcome, outcome
from postfleet.delivery.settings import DeliverySettings
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.wire import smtp_path

DELIVERED = "delivered to maildir"
UNKNOWN_USER = 'unknown user: "{user}"'
LOOP = "mail forwarding loop for {address}"


def split_address(address: str, delimiter: str) -> tuple[str, str]:
    """(user, domain): the local part lowercased without its extension."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if len(local) > 1 and local.startswith('"') and local.endswith('"'):
        local = local[1:-1]
    local = local.lower()
    if delimiter:
        cut = min((i for i in (local.find(c) for c in delimiter) if i > 0), default=-1)
        if cut > 0:
            local = local[:cut]
    return local, domain.lower()


def _safe_name(name: str) -> bool:
    """A name usable as one path component (never "..", "/" or hidden)."""
    return bool(name) and not name.startswith(".") and "/" not in name and "\0" not in name


class _MaildirTransport:
    """What local(8) and virtual(8) share: everything but where the maildir
    is. ``name`` is the agent's, in the mail log and as relay=."""

    def __init__(self, settings: DeliverySettings, name: str, size_limit: int) -> None:
        self.settings = settings
        self.program = self.relay = name
        self.size_limit = size_limit
        self.hostname = settings.myhostname

    def mailbox(self, address: str) -> tuple[Path | None, str]:
        """The maildir for a recipient, or None and the unknown-user text."""
        raise NotImplementedError

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        outcomes = await asyncio.to_thread(self._deliver_all, message, job.recipients)
        return Delivery(self.relay, outcomes, final=True)

    def _deliver_all(
        self, message: StoredMessage, recipients: Sequence[delivery_pb2.JobRecipient]
    ) -> list[Outcome]:
        seen = delivered_to(message.body)
        return_path = smtp_path(message.sender)
        return [self._deliver_one(message, r.address, seen, return_path) for r in recipients]

    def _deliver_one(
        self, message: StoredMessage, address: str, seen: list[str], return_path: str
    ) -> Outcome:
        mailbox, unknown = self.mailbox(address)
        if mailbox is None:
            return outcome("5.1.1", unknown)
        recipient = address.lower()
        if recipient in seen:
            return outcome("5.4.6", LOOP.format(address=recipient))
        prefix = delivery_headers(return_path, recipient)
        try:
            write_maildir(mailbox, prefix, message.body, size_limit=self.size_limit,
                          hostname=self.hostname)
        except MaildirError as exc:
            return outcome(exc.dsn, exc.text)
        return outcome("2.0.0", DELIVERED)


class LocalTransport(_MaildirTransport):
    """local(8): <local_mail_root>/<user>/Maildir/."""

    def __init__(self, settings: DeliverySettings) -> None:
        super().__init__(settings, "local", settings.mailbox_size_limit)
        self.root = Path(settings.local_mail_root).absolute()
        self.allowed = frozenset(u.lower() for u in settings.local_recipients)

    def mailbox(self, address: str) -> tuple[Path | None, str]:
        user, _domain = split_address(address, self.settings.recipient_delimiter)
        unknown = UNKNOWN_USER.format(user=user)
        if not _safe_name(user):
            return None, unknown
        home = self.root / user
        if self.allowed:
            exists = user in self.allowed
        elif self.settings.local_user_policy == "create":
            exists = True
        else:
            exists = home.is_dir()
        return (home / "Maildir" if exists else None), unknown


class VirtualTransport(_MaildirTransport):
    """virtual(8): <virtual_mailbox_base>/<domain>/<user>/."""

    def __init__(self, settings: DeliverySettings) -> None:
        super().__init__(settings, "virtual", settings.virtual_mailbox_limit)
        self.base = Path(settings.virtual_mailbox_base).absolute()

    def mailbox(self, address: str) -> tuple[Path | None, str]:
        user, domain = split_address(address, self.settings.recipient_delimiter)
        unknown = UNKNOWN_USER.format(user=f"{user}@{domain}" if domain else user)
        if not (_safe_name(user) and _safe_name(domain)):
            return None, unknown
        box = self.base / domain / user
        if self.settings.virtual_user_policy == "existing" and not box.is_dir():
            return None, unknown
        return box, unknown
