"""A real Dovecot LMTP server for the lmtp transport's tests (Debian
dovecot-lmtpd): its own config, base_dir, state and log in a private
directory, an inet listener on a free loopback port and a UNIX socket, a
static userdb whose users' maildirs are ``<dir>/mail/<domain>/<user>/Maildir``.

Dovecot runs mail processes as the userdb's uid, never root: as root the
users are ``nobody`` (65534), so the directory is made outside pytest's
private (0700) tmp tree, world-traversable, and removed at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import free_port, wait_port

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols = lmtp
ssl = no
listen = 127.0.0.1
{users}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/mail/%d/%n
}}
mail_location = maildir:~/Maildir
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp-test {{
    mode = 0666
  }}
}}
service anvil {{
  chroot =
}}
"""


# Debian's dovecot-core has the dovecot binary; the LMTP service is apart.
LMTP_SERVICE = "/usr/lib/dovecot/lmtp"


def dovecot_binary() -> str:
    found = peer_binary("dovecot", "dovecot-lmtpd")
    if not os.path.exists(LMTP_SERVICE):
        raise RuntimeError(f"{LMTP_SERVICE} not found: run `make peers` "
                           "(Debian package dovecot-lmtpd)")
    return found


class Dovecot:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="postfleet-dovecot-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            self.uid = self.gid = 65534
            users = ""
        else:  # a user's own Dovecot runs everything as that user
            self.uid, self.gid = os.getuid(), os.getgid()
            me = pwd.getpwuid(self.uid).pw_name
            users = f"default_internal_user = {me}\ndefault_login_user = {me}\n"
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(CONF.format(dir=self.dir, port=self.port, uid=self.uid,
                                         gid=self.gid, users=users))

    @property
    def socket_path(self) -> Path:
        return self.dir / "run" / "lmtp-test"

    @property
    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def maildir(self, domain: str, user: str) -> Path:
        return self.dir / "mail" / domain / user / "Maildir"

    def start(self) -> Dovecot:
        for sub in ("run", "state", "mail"):
            (self.dir / sub).mkdir(exist_ok=True)
        os.chown(self.dir / "mail", self.uid, self.gid)
        self.proc = subprocess.Popen(
            [dovecot_binary(), "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr", "wb"),
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"dovecot did not start: {self.log}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
