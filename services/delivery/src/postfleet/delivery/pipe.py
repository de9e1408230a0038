"""The pipe transport: Postfix's pipe(8), a command per job fed the message
on its standard input.

A pipe service is declared as in master.cf, by its attributes
(``pipe_transports: {filtro: "flags=Rq user=nobody argv=/etc/postfleet/filtro
-f ${sender} -- ${recipient}"}``); each name becomes a transport of its own.

- ``argv=`` the command and its arguments (the rest of the line, split at
  white space, no shell). Macros: ``${sender}``, ``${nexthop}``,
  ``${queue_id}``, ``${size}``, and per recipient ``${recipient}``,
  ``${original_recipient}``, ``${user}``, ``${extension}``, ``${domain}``,
  ``${mailbox}``: an argument with a per-recipient macro is repeated once
  for each recipient of the job;
- ``flags=``: ``D`` Delivered-To:, ``O`` X-Original-To:, ``R``
  Return-Path:, ``F`` a "From sender date" first line, ``.`` dot-stuffing,
  ``>`` quoting of "From " lines, ``B`` a blank line at the end, ``h``
  lower-case domains and nexthop, ``u`` lower-case users, ``q`` quote
  addresses as RFC 5321 does, ``X`` final delivery ("delivered" rather than
  "relayed", nothing else here);
- ``user=`` the user the command runs as (never root), ``size=`` the
  largest message accepted (5.2.3 beyond), ``eol=`` the line end written
  (``\\n`` by default).

Outcomes as pipe(8) has them: exit 0 is ``delivered via NAME service``
(with the command's output, if any); an exit status of <sysexits.h>
defers (EX_TEMPFAIL, EX_OSERR) or bounces with its DSN and text, followed by
"Command output: ..."; output that starts with an enhanced status code
gives the DSN; any other status bounces "Command died with status N";
a signal defers; past command_time_limit the command is killed and the
message bounces.

Postfix parameters: command_time_limit (pipe's <transport>_time_limit);
the service attributes above.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import time
from dataclasses import dataclass

from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.outcome import RELAY_NONE, Delivery, Outcome, misconfigured, outcome
from postfleet.delivery.store import StoredMessage
from postfleet.delivery.wire import smtp_path

__all__ = ["SYSEXITS", "PipeService", "PipeTransport", "command_status", "expand_argv",
           "parse_pipe_service"]

# <sysexits.h>: status -> (dsn, text), as Postfix's sys_exits.c.
SYSEXITS: dict[int, tuple[str, str]] = {
    64: ("5.3.0", "command line usage error"),
    65: ("5.6.0", "data format error"),
    66: ("5.3.0", "cannot open input"),
    67: ("5.1.1", "user unknown"),
    68: ("5.1.2", "host name unknown"),
    69: ("5.3.0", "service unavailable"),
    70: ("5.3.0", "internal software error"),
    71: ("4.3.0", "system resource problem"),
    72: ("5.3.0", "critical OS file missing"),
    73: ("5.2.0", "can't create user output file"),
    74: ("5.3.0", "input/output error"),
    75: ("4.3.0", "temporary failure"),
    76: ("5.5.0", "remote error in protocol"),
    77: ("5.7.0", "permission denied"),
    78: ("5.3.5", "local configuration error"),
}
OUTPUT_LIMIT = 2000  # bytes of command output kept for the reason
_MACRO = re.compile(r"\$\{(\w+)\}|\$(\w+)")
_PER_RECIPIENT = {"recipient", "original_recipient", "user", "extension", "domain", "mailbox"}
_KNOWN = _PER_RECIPIENT | {"sender", "nexthop", "queue_id", "size", "client_address",
                           "client_hostname", "client_helo", "client_protocol"}
_DSN_OUTPUT = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+(.*)", re.S)
FLAGS = set("DORF.>BhuqX")


class PipeConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PipeService:
    argv: tuple[str, ...]
    flags: str = ""
    user: str = ""
    size: int = 0
    eol: bytes = b"\n"


def parse_pipe_service(text: str) -> PipeService:
    """master.cf's pipe attributes: ``flags=… user=… argv=command args…``."""
    head, sep, command = text.partition("argv=")
    if not sep or not command.split():
        raise PipeConfigError(f"{text!r}: missing argv= command")
    attrs: dict[str, str] = {}
    for word in head.split():
        name, eq, value = word.partition("=")
        if not eq or name not in ("flags", "user", "size", "eol"):
            raise PipeConfigError(f"{text!r}: unknown pipe attribute {word!r}")
        attrs[name] = value
    flags = attrs.get("flags", "")
    if set(flags) - FLAGS:
        raise PipeConfigError(f"{text!r}: unknown flags {''.join(sorted(set(flags) - FLAGS))}")
    argv = tuple(command.split())
    for arg in argv:
        for m in _MACRO.finditer(arg):
            name = m.group(1) or m.group(2)
            if name not in _KNOWN:
                raise PipeConfigError(f"{text!r}: unknown macro ${{{name}}}")
    if attrs.get("user") == "root":
        raise PipeConfigError(f"{text!r}: user=root is not allowed (pipe(8) refuses it)")
    size = attrs.get("size", "0")
    if not size.isdigit():
        raise PipeConfigError(f"{text!r}: size= needs a number")
    eol = attrs.get("eol", "\\n").replace("\\r", "\r").replace("\\n", "\n").encode()
    return PipeService(argv, flags, attrs.get("user", ""), int(size), eol)


class PipeTransport:
    """One pipe service (a master.cf line) under its transport name."""

    program = "pipe"

    def __init__(self, name: str, service: PipeService, time_limit: float) -> None:
        self.name = name
        self.service = service
        self.time_limit = time_limit

    async def deliver(self, job: delivery_pb2.Job, message: StoredMessage) -> Delivery:
        count = len(job.recipients)
        service = self.service
        if service.size and len(message.body) > service.size:
            return Delivery.all(count, outcome("5.2.3", "message file too big"))
        try:
            argv = expand_argv(service, job, len(message.body))
            user = _user(service.user)
        except (PipeConfigError, KeyError) as exc:
            return Delivery.all(count, misconfigured(exc))
        content = _content(service, message, job)
        result = await self._run(argv, content, user)
        return Delivery.all(count, result, RELAY_NONE)

    async def _run(self, argv: list[str], content: bytes, user: pwd.struct_passwd | None
                   ) -> Outcome:
        command = " ".join(argv)
        kwargs: dict[str, object] = {}
        if user is not None and os.geteuid() == 0:
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                **kwargs)  # type: ignore[arg-type]
        except OSError as exc:
            return outcome("4.3.0", f"Command failed: {exc.strerror}: \"{command}\"")
        try:
            out, _ = await asyncio.wait_for(proc.communicate(content), self.time_limit)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return outcome("5.3.0", f"Command time limit exceeded: \"{command}\"")
        except (BrokenPipeError, ConnectionResetError):
            out = await proc.stdout.read() if proc.stdout else b""
            await proc.wait()
        text = " ".join(out[:OUTPUT_LIMIT].decode("utf-8", "replace").split())
        return command_status(proc.returncode or 0, text, command, self.name,
                              "X" in self.service.flags)


def command_status(status: int, output: str, command: str, service: str,
                   final: bool = False) -> Outcome:
    """pipe_command.c's verdict on how the command ended."""
    suffix = f". Command output: {output}" if output else ""
    if status < 0:
        return outcome("4.3.0", f"Command died with signal {-status}: \"{command}\"{suffix}")
    if status == 0:
        saved = f" ({output[:100]})" if output else ""
        return outcome("2.0.0", f"delivered via {service} service{saved}")
    match = _DSN_OUTPUT.match(output)
    if match:
        return outcome(match.group(1), match.group(2))
    if status in SYSEXITS:
        dsn, text = SYSEXITS[status]
        return outcome(dsn, f"{text}{suffix}")
    return outcome("5.3.0", f"Command died with status {status}: \"{command}\"{suffix}")


def _user(name: str) -> pwd.struct_passwd | None:
    return pwd.getpwnam(name) if name else None


def expand_argv(service: PipeService, job: delivery_pb2.Job, size: int) -> list[str]:
    flags = service.flags
    lower_host = "h" in flags
    common = {
        "sender": _address(job.sender, "q" in flags), "queue_id": job.queue_id,
        "nexthop": job.nexthop.lower() if lower_host else job.nexthop, "size": str(size),
        "client_address": "", "client_hostname": "", "client_helo": "", "client_protocol": "",
    }
    argv: list[str] = []
    for arg in service.argv:
        names = {m.group(1) or m.group(2) for m in _MACRO.finditer(arg)}
        if names & _PER_RECIPIENT:
            argv.extend(_expand(arg, {**common, **_recipient(r, flags)}) for r in job.recipients)
        else:
            argv.append(_expand(arg, common))
    return argv


def _expand(arg: str, values: dict[str, str]) -> str:
    return _MACRO.sub(lambda m: values[m.group(1) or m.group(2)], arg)


def _address(address: str, quote: bool) -> str:
    return smtp_path(address)[1:-1] if quote and address else address


def _recipient(rcpt: delivery_pb2.JobRecipient, flags: str) -> dict[str, str]:
    local, at, domain = rcpt.address.rpartition("@")
    if not at:
        local, domain = rcpt.address, ""
    user, _, extension = local.partition("+")
    if "u" in flags:
        user = user.lower()
    if "h" in flags:
        domain = domain.lower()
    return {"recipient": _address(rcpt.address, "q" in flags),
            "original_recipient": rcpt.orcpt or rcpt.address, "user": user,
            "extension": extension, "domain": domain, "mailbox": local}


def _content(service: PipeService, message: StoredMessage, job: delivery_pb2.Job) -> bytes:
    flags = service.flags
    head: list[str] = []
    if "F" in flags:
        head.append(f"From {message.sender or 'MAILER-DAEMON'}  "
                    f"{time.strftime('%a %b %d %H:%M:%S %Y')}")
    if "R" in flags:
        head.append(f"Return-Path: {smtp_path(message.sender)}")
    if "O" in flags and len(job.recipients) == 1:
        head.append(f"X-Original-To: {job.recipients[0].orcpt or job.recipients[0].address}")
    if "D" in flags and len(job.recipients) == 1:
        head.append(f"Delivered-To: {job.recipients[0].address}")
    lines = message.body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    eol = service.eol
    out = [h.encode("utf-8", "replace") + eol for h in head]
    for line in lines:
        line = line.removesuffix(b"\r")
        if "." in flags and line.startswith(b"."):
            line = b"." + line
        if ">" in flags and line.startswith(b"From "):
            line = b">" + line
        out.append(line + eol)
    if "B" in flags:
        out.append(eol)
    return b"".join(out)

