"""A private Postfix instance (Debian's package) as a test's real peer: the
reference postfleet's replies are compared against.

``VariantPostfix(workdir, source_dir, port)`` (its mail log is left in
workdir) takes a directory of Postfix
files as an administrator has them (``main.cf`` and the tables it names:
``hash:/etc/postfix/transport``, ``hash:/etc/aliases``, … found in the
directory by base name, as ``postfleet import-postfix`` finds them) and runs
them under ``postfix -c CONF``:

- every table is built into CONF with postmap/postalias (same type, path
  moved); ``unix:passwd.byname`` becomes a ``hash:`` table of the user names
  in the directory's ``passwd`` file (the machine's own users are not the
  example's);
- appended to main.cf, only what a private instance on a shared machine
  needs: its own queue/data directories, ``inet_interfaces = 127.0.0.1``,
  ``maillog_file`` (no syslog here) with ``maillog_file_prefixes``,
  ``smtpd_peername_lookup = no`` and ``smtp_dns_support_level = disabled``
  (no off-box DNS);
- master.cf is Debian's with every service unchrooted and smtpd listening on
  ``127.0.0.1:PORT`` only.

Started with ``postfix start`` as root, stopped with ``postfix stop`` (and
``postfix abort``-style kill of its master by pid if that fails).

Postfix parameters: those appended above (the rest are the source's).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from postfleet.core.testing.ports import wait_port

POSTFIX = "/usr/sbin/postfix"
MASTER_CF = Path("/etc/postfix/master.cf")
# type:/path/name table references in main.cf values
_TABLE = re.compile(r"\b(hash|btree|texthash|lmdb|cdb):(/[^\s,]+)")
_UNIX_PASSWD = re.compile(r"\b(?:proxy:)?unix:passwd\.byname\b")
_ALIAS_PARAMS = ("alias_maps", "alias_database")


class PostfixMissing(RuntimeError):
    pass


class VariantPostfix:
    def __init__(self, workdir: Path, source: Path, port: int) -> None:
        if not Path(POSTFIX).exists():
            raise PostfixMissing("Postfix is not installed: run scripts/install-peers")
        # Postfix's daemons run as the postfix user, which must be able to
        # reach the data directory: pytest's own temporary directories are
        # root's only, so the instance lives in a directory of its own and
        # leaves its mail log in ``workdir`` when it stops.
        self.workdir = workdir
        self.dir = Path(tempfile.mkdtemp(prefix="postfleet-postfix-"))
        self.conf = self.dir / "etc"
        self.source = source
        self.port = port
        self.maillog = self.dir / "maillog"

    # -- configuration ------------------------------------------------------------
    def _main_cf(self) -> str:
        text = (self.source / "main.cf").read_text()
        aliases = _alias_files(text)

        def table(m: re.Match[str]) -> str:
            kind, path = m.group(1), m.group(2)
            name = Path(path).name
            if kind == "texthash":
                return f"texthash:{self._copy(name)}"
            self._build(kind, name, alias=name in aliases)
            return f"{kind}:{self.conf / name}"

        text = _TABLE.sub(table, text)
        if _UNIX_PASSWD.search(text):
            users = [line.split(":", 1)[0] for line in
                     (self.source / "passwd").read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
            (self.conf / "passwd.byname").write_text("".join(f"{u} x\n" for u in users))
            self._postmap("hash", self.conf / "passwd.byname")
            text = _UNIX_PASSWD.sub(f"hash:{self.conf / 'passwd.byname'}", text)
        return text + "\n".join([
            "", "# -- a private instance (postfleet's tests) --",
            f"queue_directory = {self.dir / 'spool'}",
            f"data_directory = {self.dir / 'data'}",
            f"maillog_file = {self.maillog}", f"maillog_file_prefixes = {self.dir}",
            "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
            "smtpd_peername_lookup = no", "smtp_dns_support_level = disabled",
            "mail_owner = postfix", "setgid_group = postdrop", ""])

    def _master_cf(self) -> str:
        out = []
        for line in MASTER_CF.read_text().splitlines():
            fields = line.split()
            if line.startswith(("#", " ", "\t")) or len(fields) < 8:
                out.append(line)
                continue
            if fields[1] == "inet":
                if fields[0] != "smtp":
                    continue
                fields[0] = f"127.0.0.1:{self.port}"
            fields[4] = "n"  # chroot: no
            out.append("  ".join(fields))
        return "\n".join(out) + "\n"

    def _copy(self, name: str) -> Path:
        target = self.conf / name
        shutil.copyfile(self.source / name, target)
        return target

    def _build(self, kind: str, name: str, *, alias: bool) -> None:
        target = self._copy(name)
        if alias:
            subprocess.run(["/usr/sbin/postalias", "-c", str(self.conf), f"{kind}:{target}"],
                           check=True, capture_output=True, timeout=60)
        else:
            self._postmap(kind, target)

    def _postmap(self, kind: str, path: Path) -> None:
        subprocess.run(["/usr/sbin/postmap", "-c", str(self.conf), f"{kind}:{path}"],
                       check=True, capture_output=True, timeout=60)

    # -- life ------------------------------------------------------------------------
    def start(self) -> VariantPostfix:
        self.conf.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        (self.dir / "spool").mkdir(exist_ok=True)
        # main.cf first (without tables) so postmap -c finds a configuration
        (self.conf / "main.cf").write_text("compatibility_level = 3.6\n")
        (self.conf / "master.cf").write_text(self._master_cf())
        main_cf = self._main_cf()
        (self.conf / "main.cf").write_text(main_cf)
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir / "data", "postfix", "postfix")
        # postfix(1) only says why it did not start on a terminal: give it one.
        done = subprocess.run(["script", "-qec", f"{POSTFIX} -c {self.conf} start",
                               "/dev/null"], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"postfix start failed: {done.stdout}{done.stderr}"
                               f"{self._log_tail()}")
        wait_port(self.port, "127.0.0.1", 30)
        return self

    def stop(self) -> None:
        try:
            self._stop()
        finally:
            if self.maillog.exists():
                self.workdir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.maillog, self.workdir / "maillog")
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True,
                       timeout=60)
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                return
            time.sleep(0.1)
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                pass

    def _log_tail(self) -> str:
        log = self.workdir / "maillog"
        return log.read_text()[-2000:] if log.exists() else ""

    def __enter__(self) -> VariantPostfix:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alias_files(main_cf: str) -> set[str]:
    """Base names of the files alias_maps/alias_database name (postalias format)."""
    names: set[str] = set()
    for line in main_cf.splitlines():
        name, _, value = line.partition("=")
        if name.strip() in _ALIAS_PARAMS:
            names.update(Path(m.group(2)).name for m in _TABLE.finditer(value))
    return names
