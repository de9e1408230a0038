"""Debian's Postfix (3.7) as a real peer in tests: ``smtp-sink`` as a next
hop that offers DSN (and not SMTPUTF8), dumping what it received with the
MAIL and RCPT parameters it was given; and a private Postfix instance (its
own config, queue and data directories, ``postfix -c DIR start``) to hold
the same conversation with as postfleet.

    with PostfixSink(tmp_path / "sink") as sink:   # sink.nexthop, sink.received()
    with PrivatePostfix(tmp_path / "pf", {"relay_domains": "example.test"}) as pf:

smtp-sink runs as ``-u nobody`` (it refuses root) and writes each message,
with ``X-Mail-Args:`` / ``X-Rcpt-Args:`` headers, to a directory of its own
under the system's temporary directory (nobody cannot traverse pytest's).
The private Postfix follows PEERS.md: ``maillog_file`` (no syslog here),
``inet_interfaces = 127.0.0.1``, no chroot, no DNS.

Postfix parameters: the private instance's main.cf is what the test gives,
over these defaults.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import free_port, wait_port

__all__ = ["PostfixSink", "PrivatePostfix", "SinkDump"]


@dataclass(frozen=True)
class SinkDump:
    """One message as smtp-sink dumped it."""

    mail_args: str  # "<a@b> RET=HDRS ENVID=x"
    rcpt_args: list[str]  # one "<c@d> ORCPT=... NOTIFY=..." per recipient
    data: bytes  # the message after smtp-sink's own headers


class PostfixSink:
    """smtp-sink on a free loopback port; ``options`` are its flags (``-N``:
    no DSN)."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.options = options
        self.proc: subprocess.Popen[bytes] | None = None
        self.dump = Path(tempfile.mkdtemp(prefix="postfleet-smtp-sink-"))

    @property
    def nexthop(self) -> str:
        return f"[127.0.0.1]:{self.port}"

    def start(self) -> PostfixSink:
        binary = peer_binary("smtp-sink", "postfix")
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dump, 0o777)  # nobody writes the dumps
        self.proc = subprocess.Popen(
            [binary, "-u", "nobody", *self.options, "-d", f"{self.dump}/%M.",
             f"127.0.0.1:{self.port}", "64"],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "sink.log", "ab"))
        wait_port(self.port)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dump, ignore_errors=True)

    def __enter__(self) -> PostfixSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def received(self) -> list[SinkDump]:
        """What it has taken so far, oldest first: only dumps smtp-sink has
        closed (it creates a dump's file before it writes it, so a file it
        still holds open can be empty or partial)."""
        found = []
        paths = list(self.dump.iterdir())  # before the open files: see above
        writing = self._open_files()
        for path in sorted(paths, key=lambda p: p.stat().st_mtime):
            if str(path) in writing:
                continue
            raw = path.read_bytes()
            head, _, rest = raw.partition(b"\nReceived: ")
            fields = [line.split(": ", 1) for line in head.decode().splitlines() if ": " in line]
            found.append(SinkDump(
                mail_args=next((v for k, v in fields if k == "X-Mail-Args"), ""),
                rcpt_args=[v for k, v in fields if k == "X-Rcpt-Args"],
                data=b"Received: " + rest))
        return found

    def _open_files(self) -> set[str]:
        assert self.proc is not None, "smtp-sink is not running"
        fds = Path(f"/proc/{self.proc.pid}/fd")
        held = set()
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):  # closed meanwhile
                held.add(os.readlink(fd))
        return held


_DEFAULTS = {
    "compatibility_level": "3.6",
    "mail_owner": "postfix",
    "inet_interfaces": "127.0.0.1",
    "inet_protocols": "ipv4",
    "mydestination": "",
    "smtp_dns_support_level": "disabled",
    "maillog_file_prefixes": "/",
}


class PrivatePostfix:
    """A Postfix of the test's own: ``main`` is main.cf on top of the defaults
    above; smtpd listens on ``port`` (127.0.0.1). Its directories live under
    the system's temporary directory (the postfix user must traverse them;
    it cannot traverse pytest's), ``logs`` (the test's) gets its mail log."""

    def __init__(self, logs: Path, main: dict[str, Any] | None = None) -> None:
        self.logs = logs
        self.directory = Path(tempfile.mkdtemp(prefix="postfleet-postfix-"))
        self.port = free_port()
        self.main = {**_DEFAULTS, **(main or {})}
        self.conf = self.directory / "conf"
        self.started = False

    @property
    def maillog(self) -> Path:
        return self.directory / "maillog"

    def start(self) -> PrivatePostfix:
        postfix = peer_binary("postfix", "postfix")
        os.chmod(self.directory, 0o755)
        for sub in ("conf", "queue", "data"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.directory / "data", "postfix")
        main = {**self.main, "queue_directory": self.directory / "queue",
                "data_directory": self.directory / "data", "maillog_file": self.maillog}
        (self.conf / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.conf / "master.cf").write_text(self._master_cf())
        self._postfix(postfix, "start")
        self.started = True
        wait_port(self.port)
        return self

    def _master_cf(self) -> str:
        """Debian's master.cf, chroot off, smtpd on our port only."""
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if line[:1].isalnum() and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"
                line = "  ".join(fields)
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _postfix(self, binary: str, command: str) -> None:
        done = subprocess.run([binary, "-c", str(self.conf), command], capture_output=True,
                              text=True, timeout=60)
        if done.returncode != 0:
            log = self.maillog.read_text() if self.maillog.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {done.stderr}\n{log[-3000:]}")

    def stop(self) -> None:
        if self.started:
            self.started = False
            self._postfix(peer_binary("postfix", "postfix"), "stop")
        if self.maillog.exists():
            self.logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.maillog, self.logs / "maillog")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ehlo_keywords(transcript: str) -> list[str]:
    """The keywords of the last EHLO reply (the greeting name left out) in a
    swaks transcript, in the server's order; under TLS swaks draws its arrows
    "~>" and "<~" instead of "->" and "<-"."""
    lines = transcript.splitlines()
    last = max(i for i, line in enumerate(lines) if line[1:].startswith(("-> EHLO ",
                                                                          "~> EHLO ")))
    keywords = []
    for line in lines[last + 1:]:
        if line[:7] not in ("<-  250", "<~  250"):
            break
        keywords.append(line[len("<-  250-"):])
    return keywords[1:]
