"""ingress-smtp: the server side of SMTP AUTH (Postfix's xsasl layer): two
backends behind one exchange interface, as smtpd_sasl_glue.c drives them.

- ``smtpd_sasl_type = dovecot``: Dovecot's authentication protocol (the
  client side of Dovecot's auth-client protocol 1.2, as Postfix's
  xsasl_dovecot_server.c speaks it) to ``smtpd_sasl_path`` -- a UNIX socket
  path, or ``inet:host:port`` for an ``inet_listener`` of Dovecot's ``service
  auth``. Dovecot runs the mechanisms; this side only relays base64 lines.
  One connection per AUTH command (handshake, one request, close): a few
  lines more than Postfix's one connection per smtpd process, and no
  multiplexing of concurrent sessions' requests to get wrong. No kept Python
  library speaks this protocol asynchronously (PyPI's ``dovecotauth`` is
  blocking and unmaintained since 2019), so it is written here: five reply
  types.
- ``smtpd_sasl_type = builtin`` (postfleet's own; Postfix's default is
  ``cyrus``, which postfleet does not have): PLAIN and LOGIN checked against
  the user table file named by ``smtpd_sasl_path`` (postfleet.core.sasl_users:
  a Dovecot passwd-file with Argon2id hashes). The hash is verified in a
  worker thread (Argon2 is deliberately slow); an unknown user costs the
  same as a wrong password.

Replies of failed exchanges carry Postfix's reasons: "Invalid
authentication mechanism: 'X'", "Invalid base64 data in initial response",
Dovecot's own ``reason=``, "authentication failure" for the built-in table
(Cyrus SASL's wording), "Can't connect to authentication server" (a
temporary failure, 454).

Postfix parameters: smtpd_sasl_type, smtpd_sasl_path, smtpd_sasl_service.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from postfleet.core.sasl_users import UserTable, hash_password, verify_password

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0  # Postfix xsasl_dovecot: AUTH_TIMEOUT
MECHANISMS_TTL = 60.0  # how long Dovecot's mechanism list is taken as current
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*=*$")  # Postfix is_valid_base64, "=" alone included

StepStatus = Literal["more", "done", "fail", "temp"]


@dataclass(frozen=True)
class Step:
    """One answer of a SASL exchange: ``more`` (``text`` is the base64
    challenge), ``done`` (``username`` logged in), ``fail`` / ``temp`` (``text``
    is the reason)."""

    status: StepStatus
    text: str = ""
    username: str = ""


class SaslExchange(Protocol):
    async def first(self, mechanism: str, initial: str | None) -> Step: ...

    async def next(self, response: str) -> Step: ...

    async def close(self) -> None: ...


class SaslBackend(Protocol):
    async def mechanisms(self) -> list[str]:
        """The mechanisms to announce in EHLO ([] when the backend is unreachable)."""

    def exchange(self, *, client_ip: str, server_ip: str, secured: bool) -> SaslExchange: ...


def _valid(data: str) -> bool:
    return bool(_BASE64.match(data))


def _decode(data: str) -> bytes | None:
    if data == "=":  # RFC 4954: an empty initial response
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- built-in user table ---------------------------------------------------------------
AUTH_FAILURE = "authentication failure"


@functools.cache
def _unknown_user_hash() -> str:
    """Verified against when the user is unknown, so that both cost one Argon2 run."""
    return hash_password(os.urandom(16).hex())


class BuiltinSasl:
    """PLAIN and LOGIN against the built-in user table."""

    def __init__(self, path: str) -> None:
        self.table = UserTable(path)

    async def mechanisms(self) -> list[str]:
        return ["PLAIN", "LOGIN"]

    def exchange(self, *, client_ip: str, server_ip: str, secured: bool) -> SaslExchange:
        return _BuiltinExchange(self.table)


class _BuiltinExchange:
    def __init__(self, table: UserTable) -> None:
        self.table = table
        self.mechanism = ""
        self.username: str | None = None

    async def first(self, mechanism: str, initial: str | None) -> Step:
        self.mechanism = mechanism.upper()
        if self.mechanism not in ("PLAIN", "LOGIN"):
            return Step("fail", f"Invalid authentication mechanism: '{mechanism}'")
        if initial is None:
            return Step("more", "" if self.mechanism == "PLAIN" else _b64("Username:"))
        return await self._take(initial, "initial")

    async def next(self, response: str) -> Step:
        return await self._take(response, "continued")

    async def _take(self, data: str, which: str) -> Step:
        decoded = _decode(data) if _valid(data) else None
        if decoded is None:
            return Step("fail", f"Invalid base64 data in {which} response")
        text = decoded.decode("utf-8", "replace")
        if self.mechanism == "LOGIN":
            if self.username is None:
                self.username = text
                return Step("more", _b64("Password:"))
            return await self._check(self.username, text)
        parts = text.split("\0")
        if len(parts) != 3 or (parts[0] and parts[0] != parts[1]):
            return Step("fail", AUTH_FAILURE)  # malformed, or proxy authorization
        return await self._check(parts[1], parts[2])

    async def _check(self, username: str, password: str) -> Step:
        try:
            stored = self.table.stored_hash(username)
        except (OSError, ValueError) as exc:
            log.error("SASL user table %s: %s", self.table.path, exc)
            return Step("temp", "user table unreadable")
        ok = await asyncio.to_thread(
            verify_password, stored or _unknown_user_hash(), password)
        if ok and stored is not None:
            return Step("done", username=username)
        return Step("fail", AUTH_FAILURE, username=username)

    async def close(self) -> None:
        return None


# -- Dovecot -----------------------------------------------------------------------------
def parse_dovecot_path(path: str) -> tuple[str, int] | str:
    """``inet:host:port`` -> (host, port); anything else is a UNIX socket path."""
    if not path.startswith("inet:"):
        if not path:
            raise ValueError("smtpd_sasl_path is empty (a socket path or inet:host:port)")
        return path
    host, colon, port = path[5:].rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"smtpd_sasl_path {path!r}: expected inet:host:port")
    return host.strip("[]"), int(port)


class _Connection:
    """One connection to Dovecot's auth service, after the handshake."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 mechanisms: list[str]) -> None:
        self.reader = reader
        self.writer = writer
        self.mechanisms = mechanisms

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()

    async def line(self) -> str | None:
        raw = await asyncio.wait_for(self.reader.readline(), AUTH_TIMEOUT)
        return raw.decode("utf-8", "replace").rstrip("\r\n") if raw else None

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


class DovecotSasl:
    def __init__(self, path: str, service: str = "smtp") -> None:
        self.target = parse_dovecot_path(path)
        self.service = service
        self._mechanisms: list[str] = []
        self._checked = 0.0

    async def connect(self) -> _Connection:
        """Open and greet (VERSION, CPID); read MECH lines up to DONE."""
        if isinstance(self.target, str):
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.target), AUTH_TIMEOUT)
        else:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), AUTH_TIMEOUT)
        conn = _Connection(reader, writer, [])
        try:
            await conn.send(f"VERSION\t1\t2\nCPID\t{os.getpid()}")
            while True:
                line = await conn.line()
                if line is None:
                    raise ConnectionError("Dovecot closed the connection in the handshake")
                fields = line.split("\t")
                if fields[0] == "VERSION" and len(fields) > 1 and fields[1] != "1":
                    raise ConnectionError(f"Dovecot auth protocol version {fields[1]}, not 1")
                if fields[0] == "MECH" and len(fields) > 1:
                    if not any(flag.lower() == "private" for flag in fields[2:]):
                        conn.mechanisms.append(fields[1].upper())
                elif fields[0] == "DONE":
                    break
        except BaseException:
            await conn.close()
            raise
        self._mechanisms, self._checked = conn.mechanisms, time.monotonic()
        return conn

    async def mechanisms(self) -> list[str]:
        if self._mechanisms and time.monotonic() - self._checked < MECHANISMS_TTL:
            return self._mechanisms
        try:
            await (await self.connect()).close()
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning("SASL: cannot connect to Dovecot auth at %s: %s", self.target, exc)
            return []
        return self._mechanisms

    def exchange(self, *, client_ip: str, server_ip: str, secured: bool) -> SaslExchange:
        return _DovecotExchange(self, client_ip, server_ip, secured)


class _DovecotExchange:
    REQUEST_ID = 1

    def __init__(self, backend: DovecotSasl, client_ip: str, server_ip: str,
                 secured: bool) -> None:
        self.backend = backend
        self.client_ip = client_ip
        self.server_ip = server_ip
        self.secured = secured
        self.conn: _Connection | None = None

    async def first(self, mechanism: str, initial: str | None) -> Step:
        try:
            self.conn = await self.backend.connect()
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.warning("SASL: cannot connect to Dovecot auth at %s: %s",
                        self.backend.target, exc)
            return Step("temp", "Can't connect to authentication server")
        if mechanism.upper() not in self.conn.mechanisms:
            return Step("fail", f"Invalid authentication mechanism: '{mechanism}'")
        if initial is not None and not _valid(initial):
            return Step("fail", "Invalid base64 data in initial response")
        request = [f"AUTH\t{self.REQUEST_ID}\t{mechanism.upper()}",
                   f"service={self.backend.service}", "nologin",
                   f"lip={self.server_ip}", f"rip={self.client_ip}"]
        if self.secured:
            request.append("secured")
        if initial is not None:
            request.append(f"resp={initial}")
        return await self._ask("\t".join(request))

    async def next(self, response: str) -> Step:
        if not _valid(response):
            return Step("fail", "Invalid base64 data in continued response")
        return await self._ask(f"CONT\t{self.REQUEST_ID}\t{response}")

    async def _ask(self, request: str) -> Step:
        assert self.conn is not None
        try:
            await self.conn.send(request)
            while True:
                line = await self.conn.line()
                if line is None:
                    break
                step = _dovecot_reply(line.split("\t"), str(self.REQUEST_ID))
                if step is not None:
                    return step
        except (OSError, TimeoutError) as exc:
            log.warning("SASL: Dovecot auth at %s: %s", self.backend.target, exc)
        return Step("temp", "Connection lost to authentication server")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None


def _dovecot_reply(fields: Sequence[str], request_id: str) -> Step | None:
    """OK / CONT / FAIL for our request; None for anything else (skipped)."""
    if len(fields) < 2 or fields[1] != request_id:
        return None
    args = dict(f.partition("=")[::2] for f in fields[2:])
    if fields[0] == "OK":
        if not args.get("user"):
            return Step("fail", "Authentication backend error")
        return Step("done", username=args["user"])
    if fields[0] == "CONT":
        return Step("more", fields[2] if len(fields) > 2 else "")
    if fields[0] == "FAIL":
        return Step("fail", args.get("reason", ""), username=args.get("user", ""))
    return None


def sasl_backend(kind: str, path: str, service: str) -> SaslBackend:
    """smtpd_sasl_type + smtpd_sasl_path -> the backend (connects to nothing yet)."""
    if kind == "dovecot":
        return DovecotSasl(path, service)
    return BuiltinSasl(path)
