"""Dovecot's auth service as a real peer (Debian dovecot-core): the SASL
backend of ``smtpd_sasl_type = dovecot``, as most Postfix sites run it.

    auth = DovecotAuth(tmp_path / "dovecot", users_file).start()
    auth.sasl_path       # "inet:127.0.0.1:PORT", the value for smtpd_sasl_path

Only the auth service runs (``protocols =``), with an ``inet_listener`` on a
free loopback port, PLAIN and LOGIN, and a ``passwd-file`` passdb on
``users_file`` -- the built-in user table's own format (Argon2id hashes), so
one file serves both backends. base_dir, state and log live in the test's
directory. The auth process runs as the user running the tests (root in CI),
so it reads the table the test wrote with its own permissions.

Postfix parameters: none.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import free_port, wait_port

AUTH_SERVICE = "/usr/lib/dovecot/auth"

CONF = """\
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
protocols =
ssl = no
listen = 127.0.0.1
auth_mechanisms = plain login
{users}
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID {users_file}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}
service auth {{
  user = {me}
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
"""


class DovecotAuth:
    def __init__(self, workdir: Path, users_file: Path) -> None:
        self.dir = workdir
        self.users_file = users_file
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def sasl_path(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        path = self.dir / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> DovecotAuth:
        binary = peer_binary("dovecot", "dovecot-core")
        if not os.path.exists(AUTH_SERVICE):
            raise RuntimeError(f"{AUTH_SERVICE} not found: run `make peers` "
                               "(Debian package dovecot-core)")
        for sub in ("run", "state", "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        me = pwd.getpwuid(os.getuid()).pw_name
        users = "" if os.geteuid() == 0 else (
            f"default_internal_user = {me}\ndefault_login_user = {me}\n")
        conf = self.dir / "dovecot.conf"
        conf.write_text(CONF.format(dir=self.dir, users=users, users_file=self.users_file,
                                    uid=os.getuid(), gid=os.getgid(), me=me, port=self.port))
        self.proc = subprocess.Popen(
            [binary, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "stderr", "wb"), stdin=subprocess.DEVNULL)
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            stderr = (self.dir / "stderr").read_text(errors="replace")
            raise RuntimeError(f"dovecot auth did not start: {stderr}{self.log}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.proc = None
