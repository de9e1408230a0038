"""Writing one message into a Maildir, as Postfix's local(8) and virtual(8) do.

The file is created under ``tmp/`` with a name nobody else can pick, written
with LF line endings (the queue keeps CRLF, a mailbox keeps LF) after the
delivery headers (Return-Path:, Delivered-To:), fsynced, then linked into
``new/`` under its final name ``<sec>.V<dev>I<ino>M<usec>P<pid>Q<n>.<host>``
and unlinked from ``tmp/``; ``new/`` is fsynced too, so a delivery reported
as sent survives a crash (DESIGN invariant 2). The directories are made
(0700) when missing.

A file larger than the size limit is refused like Postfix refuses it through
the file size limit: 5.2.2 "maildir delivery failed: error writing message:
File too large". Other write errors are deferred (4.2.0), a full disk as
4.3.0, a full quota or too large a file 5.2.2 (Postfix's mbox_dsn()).

Postfix parameters: mailbox_size_limit, virtual_mailbox_limit (the caller
passes the one that applies).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import secrets
import time
from pathlib import Path

_sequence = itertools.count(1)

FILE_TOO_LARGE = "maildir delivery failed: error writing message: File too large"


class MaildirError(Exception):
    def __init__(self, dsn: str, text: str) -> None:
        super().__init__(text)
        self.dsn = dsn
        self.text = text


def _status(err: int, default: str = "4.2.0") -> str:
    """Postfix's mbox_dsn(): what a write error means for the sender."""
    if err in (errno.EDQUOT, errno.EFBIG):
        return "5.2.2"
    if err == errno.ENOSPC:
        return "4.3.0"
    return default


def _safe_host(hostname: str) -> str:
    """The hostname part of a maildir file name: "/" and ":" are escaped."""
    return hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"


_HEADER_END = re.compile(rb"\r?\n\r?\n")


def delivered_to(body: bytes) -> list[str]:
    """The Delivered-To: addresses already in the message's header, lowercased."""
    end = _HEADER_END.search(body)
    header = body[: end.start()] if end else body
    found: list[str] = []
    for line in header.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"delivered-to":
            found.append(value.strip().decode("utf-8", "replace").lower())
    return found


def delivery_headers(return_path: str, recipient: str) -> bytes:
    """Return-Path: then Delivered-To:, LF-terminated (Postfix's mail_copy())."""
    return f"Return-Path: {return_path}\nDelivered-To: {recipient}\n".encode()


def write_maildir(
    maildir: Path, prefix: bytes, body: bytes, *, size_limit: int, hostname: str
) -> Path:
    """Deliver ``prefix + body`` (body in CRLF) into ``maildir``; the new file's path."""
    content = prefix + body.replace(b"\r\n", b"\n")
    if content and not content.endswith(b"\n"):
        content += b"\n"
    if size_limit > 0 and len(content) > size_limit:
        raise MaildirError("5.2.2", FILE_TOO_LARGE)
    tmp, new, cur = maildir / "tmp", maildir / "new", maildir / "cur"
    try:
        for directory in (maildir, tmp, new, cur):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise MaildirError(
            _status(exc.errno or 0), f"create maildir {maildir}: {os.strerror(exc.errno or 0)}"
        ) from None

    host = _safe_host(hostname)
    now = time.time()
    sec, usec = int(now), int((now % 1) * 1_000_000)
    pid, seq = os.getpid(), next(_sequence)
    tmp_path = tmp / f"{sec}.P{pid}Q{seq}R{secrets.token_hex(4)}.{host}"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise MaildirError(
            _status(exc.errno or 0),
            f"create maildir file {tmp_path}: {os.strerror(exc.errno or 0)}",
        ) from None
    try:
        try:
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        final = new / f"{sec}.V{stat.st_dev:x}I{stat.st_ino:x}M{usec}P{pid}Q{seq}.{host}"
        try:
            os.link(tmp_path, final)  # never replaces an existing file
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV):
                raise
            os.rename(tmp_path, final)  # file systems without hard links
        else:
            os.unlink(tmp_path)
        dir_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        try:
            os.unlink(tmp_path)
        except OSError:
            pass
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise MaildirError(
            _status(exc.errno or 0),
            f"maildir delivery failed: error writing message: {reason}",
        ) from None
    return final
