"""The milter client, MTA side, on asyncio streams (Postfix's milter8.c).

Why by hand: PyPI's milter packages are the milter side (pymilter,
purepythonmilter, dkimpy-milter) except miltertest, which plays the MTA
for testing milters: blocking sockets, and a codec that decodes every string
and body chunk as UTF-8, so 8-bit mail (a Latin-1 body, a replaced body)
would raise. The protocol is small (wire.py); this module follows
milter8.c's behaviour.

One ``MilterSession`` per milter and SMTP connection (or per message for
non_smtpd_milters): connect and negotiate (OPTNEG: the actions and protocol
steps of milter_protocol), then the events in order -- CONNECT, HELO, MAIL,
RCPT, DATA, the header fields, EOH, the body in chunks of at most 65535
bytes, end of message -- each preceded by its macros (SMFIC_MACRO: the
milter_*_macros names that have a value, or the names the milter asked for
in OPTNEG), leaving out what the milter declined (SMFIP_NO*) and not
waiting for replies it will not send (SMFIP_NR_*). ``ABORT`` ends a
transaction, ``QUIT`` the session.

Replies: continue; accept (no more events for the message, or for the
connection when said at CONNECT/HELO); reject ``550 5.7.1 Command
rejected``; tempfail ``451 4.7.1 Service unavailable - try again later``;
a reply code of its own (``y``, '%%' becomes '%'); discard; quarantine
(the message goes on hold); skip (no more body chunks). At end of message
the edits come first: add, insert and change/delete header fields (indexes
as milter8: insert 0 is the top, change 1 is the first field of that name),
replace the body, change the sender, add and delete recipients.

A milter that cannot be reached, times out (milter_connect_timeout,
milter_command_timeout, milter_content_timeout) or breaks the protocol is
dropped for the rest of the session and milter_default_action answers for
it, now and for every later event: accept (as if it were not there), reject
``550 5.5.0 Service unavailable``, tempfail ``451 4.7.1 Service unavailable
- try again later``, or quarantine (accept, on hold).

Postfix parameters: see settings.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from postfleet.core.mailauth import fields
from postfleet.core.milter import wire
from postfleet.core.milter.settings import MilterSpec, macro_names
from postfleet.core.smtp import replies
from postfleet.core.smtp.replies import SmtpReply

log = logging.getLogger(__name__)

DEFAULT_ACTION_REPLIES = {
    "reject": SmtpReply(550, "5.5.0", "Service unavailable"),
    "tempfail": replies.MILTER_TEMPFAIL,
}


@dataclass
class Decision:
    """What the milters said about one event."""

    reply: SmtpReply | None = None  # a refusal (4xx/5xx) for the event
    discard: bool = False  # accept and drop the message
    hold: bool = False  # quarantine: queue it on hold
    hold_reason: str = ""

    @property
    def final(self) -> bool:
        return self.reply is not None or self.discard


@dataclass
class Edits:
    """End-of-message edits, applied in the order the milter sent them."""

    header_ops: list[tuple[bytes, int, bytes, bytes]] = field(default_factory=list)
    body: bytes | None = None
    sender: str | None = None
    add_recipients: list[str] = field(default_factory=list)
    del_recipients: list[str] = field(default_factory=list)


class MilterFailed(Exception):
    """The milter is unreachable, too slow, or broke the protocol."""


class MilterSession:
    """One milter's conversation, for one SMTP connection."""

    def __init__(self, spec: MilterSpec, macro_lists: Mapping[bytes, str]) -> None:
        self.spec = spec
        self.macro_lists = {stage: macro_names(text) for stage, text in macro_lists.items()}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.protocol = 0  # the steps the milter declined, and NR_* flags
        self.actions = 0
        # After a failure or a connection-level verdict: the reply every
        # later event gets (None: accept, i.e. the milter is out of the way).
        self.done_for_session = False
        self.session_reply: Decision | None = None
        self.done_for_message = False
        self.skip_body = False
        self.in_message = False

    @property
    def name(self) -> str:
        return self.spec.name

    # -- connection ------------------------------------------------------------------
    async def open(self) -> Decision:
        try:
            async with asyncio.timeout(self.spec.connect_timeout):
                kind, where, port = self.spec.endpoint
                if kind == "unix":
                    self._reader, self._writer = await asyncio.open_unix_connection(where)
                else:
                    self._reader, self._writer = await asyncio.open_connection(where, port)
                version = self.spec.protocol
                self._writer.write(wire.optneg(version, wire.offered_actions(version),
                                               wire.offered_protocol(version)))
                await self._writer.drain()
                command, data = await self._read()
            if command != wire.SMFIC_OPTNEG:
                raise MilterFailed(f"unexpected reply {command!r} to OPTNEG")
            their_version, actions, protocol, wanted = wire.parse_optneg(data)
            if their_version < 2:
                raise MilterFailed(f"protocol version {their_version} is too old")
            self.actions = actions & wire.offered_actions(self.spec.protocol)
            self.protocol = protocol
            for stage, names in wanted.items():
                self.macro_lists[stage] = names
            return Decision()
        except (OSError, TimeoutError, MilterFailed, wire.MilterProtocolError,
                asyncio.IncompleteReadError, ValueError) as exc:
            return self._failed(f"can't connect: {exc or type(exc).__name__}")

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                if not self.done_for_session:
                    self._writer.write(wire.packet(wire.SMFIC_QUIT))
                    await self._writer.drain()
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        self._writer = self._reader = None
        self.done_for_session = True

    def _failed(self, why: str) -> Decision:
        """milter_default_action, from now on for the whole session."""
        action = self.spec.default_action
        log.warning("milter %s: %s; default_action=%s", self.name, why, action)
        if self._writer is not None:
            self._writer.close()
        self._writer = self._reader = None
        self.done_for_session = True
        decision = Decision(reply=DEFAULT_ACTION_REPLIES.get(action),
                            hold=action == "quarantine", hold_reason=f"milter {self.name}")
        self.session_reply = decision
        return decision

    # -- I/O ---------------------------------------------------------------------------
    async def _read(self) -> tuple[bytes, bytes]:
        assert self._reader is not None
        head = await self._reader.readexactly(4)
        (length,) = struct.unpack("!L", head)
        if not 1 <= length <= wire.MAX_PACKET:
            raise wire.MilterProtocolError(f"bad packet length {length}")
        body = await self._reader.readexactly(length)
        return body[:1], body[1:]

    def _send_macros(self, stage: bytes, values: Mapping[str, str]) -> None:
        assert self._writer is not None
        names = self.macro_lists.get(stage, [])
        chosen = [(n, values[n]) for n in names if values.get(n)]
        if chosen:
            self._writer.write(wire.macros(stage, chosen))

    def _skipped(self, flag: int) -> bool:
        return bool(self.protocol & flag)

    # -- events ------------------------------------------------------------------------
    async def event(self, stage: bytes, data: bytes, macros: Mapping[str, str], *,
                    skip_flag: int, no_reply_flag: int, content: bool = False,
                    edits: Edits | None = None) -> Decision:
        """Send one event (after its macros) and read the milter's decision."""
        if self.session_reply is not None:
            return self.session_reply
        if self.done_for_session or self._writer is None:
            return Decision()
        if self.done_for_message and stage not in (wire.SMFIC_CONNECT, wire.SMFIC_HELO):
            return Decision()
        timeout = self.spec.content_timeout if content else self.spec.command_timeout
        try:
            async with asyncio.timeout(timeout):
                self._send_macros(stage, macros)
                if self._skipped(skip_flag):
                    await self._writer.drain()
                    return Decision()
                self._writer.write(wire.packet(stage, data))
                await self._writer.drain()
                if no_reply_flag and self._skipped(no_reply_flag):
                    return Decision()
                return await self._decision(stage, edits)
        except TimeoutError:
            return self._failed(f"timeout after {timeout:g}s waiting for the reply to "
                                f"{_EVENT_NAMES.get(stage, stage.decode())}")
        except (OSError, asyncio.IncompleteReadError, wire.MilterProtocolError,
                MilterFailed) as exc:
            return self._failed(f"{_EVENT_NAMES.get(stage, stage.decode())}: "
                                f"{exc or type(exc).__name__}")

    async def _decision(self, stage: bytes, edits: Edits | None) -> Decision:
        decision = Decision()
        connection_level = stage in (wire.SMFIC_CONNECT, wire.SMFIC_HELO)
        while True:
            command, data = await self._read()
            if command == wire.SMFIR_PROGRESS:
                continue
            if command == wire.SMFIR_QUARANTINE:
                decision.hold = True
                decision.hold_reason = data.rstrip(b"\0").decode("utf-8", "replace")
                continue
            if command == wire.SMFIR_CONTINUE:
                return decision
            if command == wire.SMFIR_SKIP:
                self.skip_body = True
                return decision
            if command == wire.SMFIR_ACCEPT:
                if connection_level:
                    self.done_for_session = True
                else:
                    self.done_for_message = True
                return decision
            if command == wire.SMFIR_DISCARD:
                if not connection_level:
                    self.done_for_message = True
                    decision.discard = True
                return decision
            if command in (wire.SMFIR_REJECT, wire.SMFIR_TEMPFAIL, wire.SMFIR_REPLYCODE,
                           wire.SMFIR_SHUTDOWN):
                decision.reply = _refusal(command, data)
                if connection_level:
                    self.session_reply = decision
                return decision
            if edits is not None and stage == wire.SMFIC_BODYEOB:
                _edit(edits, command, data)
                continue
            raise wire.MilterProtocolError(f"unexpected reply {command!r}")

    def connect_data(self, hostname: str, address: str, port: int) -> bytes:
        family = wire.FAMILY_INET6 if ":" in address else (
            wire.FAMILY_INET if address else wire.FAMILY_UNKNOWN)
        return wire.connect(hostname, family, port, address)[5:]


def _refusal(command: bytes, data: bytes) -> SmtpReply:
    if command == wire.SMFIR_REJECT:
        return replies.MILTER_REJECTED
    if command == wire.SMFIR_TEMPFAIL:
        return replies.MILTER_TEMPFAIL
    if command == wire.SMFIR_SHUTDOWN:
        return replies.MILTER_TEMPFAIL.with_text("Service unavailable - closing connection")
    text = data.rstrip(b"\0").decode("utf-8", "replace").replace("%%", "%")
    code = text[:3]
    if not (code.isdigit() and code[0] in "45" and text[3:4] in (" ", "-", "")):
        raise wire.MilterProtocolError(f"malformed reply {text!r}")
    rest = text[4:].split("\r\n")[-1] if "\r\n" in text else text[4:]
    status, _, words = rest.partition(" ")
    if not (status.count(".") == 2 and status[:1] == code[0]):
        status, words = f"{code[0]}.7.1", rest
    return SmtpReply(int(code), status, words)


def _edit(edits: Edits, command: bytes, data: bytes) -> None:
    if command == wire.SMFIR_ADDHEADER:
        name, value = wire.parse_header(data)
        edits.header_ops.append((command, 0, name, value))
    elif command in (wire.SMFIR_INSHEADER, wire.SMFIR_CHGHEADER):
        index, name, value = wire.parse_index_header(data)
        edits.header_ops.append((command, index, name, value))
    elif command == wire.SMFIR_REPLBODY:
        edits.body = (edits.body or b"") + data
    elif command == wire.SMFIR_CHGFROM:
        edits.sender = wire.split_strings(data)[0].decode("utf-8", "replace")
    elif command in (wire.SMFIR_ADDRCPT, wire.SMFIR_ADDRCPT_PAR):
        edits.add_recipients.append(wire.split_strings(data)[0].decode("utf-8", "replace"))
    elif command == wire.SMFIR_DELRCPT:
        edits.del_recipients.append(wire.split_strings(data)[0].decode("utf-8", "replace"))
    else:
        raise wire.MilterProtocolError(f"unexpected reply {command!r} at end of message")


_EVENT_NAMES = {
    wire.SMFIC_CONNECT: "CONNECT", wire.SMFIC_HELO: "HELO", wire.SMFIC_MAIL: "MAIL",
    wire.SMFIC_RCPT: "RCPT", wire.SMFIC_DATA: "DATA", wire.SMFIC_HEADER: "HEADER",
    wire.SMFIC_EOH: "EOH", wire.SMFIC_BODY: "BODY", wire.SMFIC_BODYEOB: "END-OF-MESSAGE",
}


def strip_angles(address: str) -> str:
    return address[1:-1] if address.startswith("<") and address.endswith(">") else address


class Milters:
    """The milters of one SMTP connection (smtpd_milters) or one submission
    (non_smtpd_milters), in order: the first refusal wins, edits pile up."""

    def __init__(self, specs: Sequence[MilterSpec], macro_lists: Mapping[bytes, str]) -> None:
        self.sessions = [MilterSession(spec, macro_lists) for spec in specs]
        self.hold = False
        self.hold_reason = ""

    def __bool__(self) -> bool:
        return bool(self.sessions)

    async def _each(self, stage: bytes, data: bytes, macros: Mapping[str, str], *,
                    skip_flag: int, no_reply_flag: int = 0) -> Decision:
        for session in self.sessions:
            decision = await session.event(stage, data, macros, skip_flag=skip_flag,
                                           no_reply_flag=no_reply_flag)
            self._note_hold(decision)
            if decision.final:
                return decision
        return Decision(hold=self.hold, hold_reason=self.hold_reason)

    def _note_hold(self, decision: Decision) -> None:
        if decision.hold and not self.hold:
            self.hold, self.hold_reason = True, decision.hold_reason

    async def connect(self, hostname: str, address: str, port: int,
                      macros: Mapping[str, str]) -> Decision:
        for session in self.sessions:
            opened = await session.open()
            self._note_hold(opened)
        first = self.sessions[0] if self.sessions else None
        data = first.connect_data(hostname, address, port) if first else b""
        return await self._each(wire.SMFIC_CONNECT, data, macros,
                                skip_flag=wire.SMFIP_NOCONNECT, no_reply_flag=wire.SMFIP_NR_CONN)

    async def helo(self, helo: str, macros: Mapping[str, str]) -> Decision:
        return await self._each(wire.SMFIC_HELO, wire.strings(helo), macros,
                                skip_flag=wire.SMFIP_NOHELO, no_reply_flag=wire.SMFIP_NR_HELO)

    async def mail(self, sender: str, args: Sequence[str],
                   macros: Mapping[str, str]) -> Decision:
        for session in self.sessions:
            if session.in_message:
                await self._abort(session)
            session.in_message = True
            session.done_for_message = session.skip_body = False
        self.hold, self.hold_reason = False, ""
        return await self._each(wire.SMFIC_MAIL, wire.strings(f"<{sender}>", *args), macros,
                                skip_flag=wire.SMFIP_NOMAIL, no_reply_flag=wire.SMFIP_NR_MAIL)

    async def rcpt(self, recipient: str, args: Sequence[str],
                   macros: Mapping[str, str]) -> Decision:
        return await self._each(wire.SMFIC_RCPT, wire.strings(f"<{recipient}>", *args), macros,
                                skip_flag=wire.SMFIP_NORCPT, no_reply_flag=wire.SMFIP_NR_RCPT)

    async def data(self, macros: Mapping[str, str]) -> Decision:
        return await self._each(wire.SMFIC_DATA, b"", macros, skip_flag=wire.SMFIP_NODATA,
                                no_reply_flag=wire.SMFIP_NR_DATA)

    async def message(self, header_fields: Sequence[tuple[bytes, bytes]], body: bytes,
                      macros: Mapping[str, str]) -> Outcome:
        """Headers, EOH, body and end of message through each milter in turn;
        each milter's edits are applied before the next one reads."""
        out = Outcome(Decision(), list(header_fields), body)
        for session in self.sessions:
            edits = Edits()
            decision = await self._content(session, out.header_fields, out.body, macros, edits)
            session.in_message = False
            self._note_hold(decision)
            if decision.final:
                out.decision = decision
                return out
            out.apply(edits, leadspace=bool(session.protocol & wire.SMFIP_HDR_LEADSPC))
        out.decision = Decision(hold=self.hold, hold_reason=self.hold_reason)
        return out

    async def _content(self, session: MilterSession, header_fields: Sequence[tuple[bytes, bytes]],
                       body: bytes, macros: Mapping[str, str], edits: Edits) -> Decision:
        if session.session_reply is not None:
            return session.session_reply
        if session.done_for_session or session.done_for_message:
            return Decision()
        leadspace = session.protocol & wire.SMFIP_HDR_LEADSPC
        for name, value in header_fields:
            sent = value if leadspace else value.removeprefix(b" ")
            decision = await session.event(
                wire.SMFIC_HEADER, wire.strings(name, sent), macros,
                skip_flag=wire.SMFIP_NOHDRS, no_reply_flag=wire.SMFIP_NR_HDR, content=True)
            if decision.final or session.done_for_message or session.done_for_session:
                return decision
        decision = await session.event(wire.SMFIC_EOH, b"", macros, skip_flag=wire.SMFIP_NOEOH,
                                       no_reply_flag=wire.SMFIP_NR_EOH, content=True)
        if decision.final or session.done_for_message or session.done_for_session:
            return decision
        for start in range(0, len(body), wire.CHUNK_SIZE):
            if session.skip_body:
                break
            decision = await session.event(
                wire.SMFIC_BODY, body[start:start + wire.CHUNK_SIZE], macros,
                skip_flag=wire.SMFIP_NOBODY, no_reply_flag=wire.SMFIP_NR_BODY, content=True)
            if decision.final or session.done_for_message or session.done_for_session:
                return decision
        return await session.event(wire.SMFIC_BODYEOB, b"", macros, skip_flag=0,
                                   no_reply_flag=0, content=True, edits=edits)

    async def _abort(self, session: MilterSession) -> None:
        if session._writer is None or session.done_for_session:
            return
        try:
            session._writer.write(wire.packet(wire.SMFIC_ABORT))
            await session._writer.drain()
        except OSError as exc:
            session._failed(f"ABORT: {exc}")
        session.in_message = False

    async def end_message(self) -> None:
        """The transaction is over (RSET, a refusal, the message queued)."""
        for session in self.sessions:
            if session.in_message:
                await self._abort(session)

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()


@dataclass
class Outcome:
    """The message as the milters left it, and their decision."""

    decision: Decision
    header_fields: list[tuple[bytes, bytes]]  # (name, value as after the colon)
    body: bytes
    sender: str | None = None
    add_recipients: list[str] = field(default_factory=list)
    del_recipients: list[str] = field(default_factory=list)

    def apply(self, edits: Edits, *, leadspace: bool) -> None:
        for command, index, name, value in edits.header_ops:
            value = _crlf(value if leadspace else b" " + value)
            lowered = name.lower()
            if command == wire.SMFIR_ADDHEADER:
                self.header_fields.append((name, value))
            elif command == wire.SMFIR_INSHEADER:
                self.header_fields.insert(min(index, len(self.header_fields)), (name, value))
            else:  # CHGHEADER: the index-th field of that name (0 counts as 1)
                positions = [i for i, (n, _) in enumerate(self.header_fields)
                             if n.lower() == lowered]
                nth = max(index, 1) - 1
                if nth < len(positions):
                    if value.strip():
                        self.header_fields[positions[nth]] = (name, value)
                    else:
                        del self.header_fields[positions[nth]]
                elif value.strip():
                    self.header_fields.append((name, value))
        if edits.body is not None:
            self.body = _crlf(edits.body)
        if edits.sender is not None:
            self.sender = strip_angles(edits.sender)
        self.add_recipients += [strip_angles(r) for r in edits.add_recipients]
        self.del_recipients += [strip_angles(r) for r in edits.del_recipients]

    def message(self) -> bytes:
        head = b"".join(name + b":" + value + b"\r\n" for name, value in self.header_fields)
        return head + b"\r\n" + self.body


def _crlf(data: bytes) -> bytes:
    """Bare LF line ends as CRLF (what the milter sent may use either)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def split_message(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """(header fields as (name, value after the colon without the line end),
    body after the blank line)."""
    raw_fields, rest = fields.split(message)
    out = []
    for raw in raw_fields:
        name, _, value = raw.partition(b":")
        out.append((name.rstrip(b" \t"), value.removesuffix(b"\n").removesuffix(b"\r")))
    if rest.startswith(b"\r\n"):
        rest = rest[2:]
    elif rest.startswith(b"\n"):
        rest = rest[1:]
    return out, rest
