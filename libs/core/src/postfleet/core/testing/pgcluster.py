"""A PostgreSQL server of the test's own, to stop and start mid-test.

The shared service at 127.0.0.1:5432 must never be stopped, so a test that
needs the database to go away (invariant 1: 4xx while the queue cannot
commit; restarts under load) gets its own cluster: ``initdb`` into the
test's directory, ``pg_ctl start`` on a free loopback port, trust auth,
fsync on (as in production). Debian's server binaries are used
(/usr/lib/postgresql/<version>/bin); as root they run as the ``postgres``
user, which initdb and the server require; the cluster lives in a
directory of its own under the system temp dir (the test's own tmp_path is
private to root) and ``remove()`` deletes it.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from postfleet.core.sockets import free_port


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql "
                           "(Debian package postgresql): the tests need them")
    return Path(found[-1]).parent


@dataclass
class PgCluster:
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="postfleet-pg-")))
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.bindir = _bindir()
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.socket_dir = self.directory / "run"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    def init(self) -> PgCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            shutil.chown(self.socket_dir, "postgres")
        done = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                         "--no-instructions")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr}")
        return self

    def start(self, timeout: float = 30) -> PgCluster:
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=on "
                f"-c max_connections=200")
        done = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts,
                         "-w", "-t", str(int(timeout)), "start")
        if done.returncode != 0:
            raise RuntimeError(f"postgres did not start: {done.stderr}\n{self.log_text()}")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: connections are cut, as in a restart; ``immediate``: a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status").returncode == 0

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def wait_stopped(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                raise TimeoutError("postgres did not stop")
            time.sleep(0.1)
