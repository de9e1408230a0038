"""The content scanners tests run as real peers: SpamAssassin's spamd,
ClamAV's clamd and amavisd-new, each on a free loopback port with private
state.

    with Spamd(tmp_path / "spamd") as spamd:   spamd.address  "127.0.0.1:PORT"
    with Clamd(tmp_path / "clamd") as clamd:   clamd.address
    with Amavisd(conf_text) as amavis:         amavis.port, amavis.log()

amavisd refuses to run as root: its home is a fresh directory under /tmp
that user amavis owns (a test's tmp_path is not reachable for it), removed
afterwards; ``conf_text`` is an amavisd.conf whose $MYHOME is replaced.

spamd uses the rules its Debian package ships (never sa-update) and scores
GTUBE 1000; clamd loads only test signatures written here (EICAR, by hash
and as a content pattern) in a fraction of a second: freshclam never runs.
A missing program fails the test, naming the package (scripts/install-peers
installs them).

Postfix parameters: none.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import free_port, wait_port

__all__ = ["EICAR", "GTUBE", "Amavisd", "Clamd", "Spamd"]

EICAR = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR_SIGNATURE = "Eicar-Test-Signature"


class _Daemon:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, argv: list[str], timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "out.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)
        try:
            wait_port(self.port, timeout=timeout)
        except TimeoutError:
            stop_process(self.proc)
            raise RuntimeError(f"{argv[0]} did not start:\n{self.log()}") from None

    def log(self) -> str:
        path = self.workdir / "out.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Spamd(_Daemon):
    def start(self) -> Spamd:
        binary = peer_binary("spamd", "spamd")
        self._spawn([binary, "-L", f"--listen=127.0.0.1:{self.port}",
                     "--allowed-ips=127.0.0.1", "-u", "nobody", "--nouser-config",
                     "--syslog=stderr", f"--pidfile={self.workdir / 'spamd.pid'}",
                     "--max-children=2"], timeout=60)
        return self

    def __enter__(self) -> Spamd:
        return self.start()


class Clamd(_Daemon):
    def start(self) -> Clamd:
        binary = peer_binary("clamd", "clamav-daemon")
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "test.hdb").write_text(f"44d88612fea8a8f36de82e1278abb02f:68:{EICAR_SIGNATURE}\n")
        (db / "test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.encode().hex()}\n")
        conf = self.workdir / "clamd.conf"
        conf.write_text(f"Foreground yes\nTCPSocket {self.port}\nTCPAddr 127.0.0.1\n"
                        f"DatabaseDirectory {db}\nPidFile {self.workdir / 'clamd.pid'}\n"
                        "LogTime yes\n")
        self._spawn([binary, "-c", str(conf)], timeout=30)
        return self

    def __enter__(self) -> Clamd:
        return self.start()


class Amavisd(_Daemon):
    """amavisd-new in the foreground; ``configure`` edits the conf text."""

    def __init__(self, conf: str) -> None:
        home = Path(tempfile.mkdtemp(prefix="postfleet-amavis-"))
        super().__init__(home)
        self.conf = conf

    def start(self) -> Amavisd:
        binary = peer_binary("amavisd", "amavisd-new")
        # The configuration's directory must not be amavis's to write: the
        # conf stays root's, $MYHOME below it is amavis's.
        self.workdir.chmod(0o755)
        home = self.workdir / "home"
        for path in (home, home / "tmp", home / "db"):
            path.mkdir(exist_ok=True)
            shutil.chown(path, "amavis", "amavis")
        conf = re.sub(r"(?m)^\$MYHOME\s*=.*$", f"$MYHOME = '{home}';", self.conf)
        conf = re.sub(r"(?m)^\$inet_socket_port\s*=.*$", f"$inet_socket_port = {self.port};",
                      conf)
        (self.workdir / "amavisd.conf").write_text(conf)
        self._spawn([binary, "-c", str(self.workdir / "amavisd.conf"), "foreground"],
                    timeout=60)
        return self

    def log(self) -> str:
        path = self.workdir / "home" / "amavis.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return text[-20000:] + super().log()

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Amavisd:
        return self.start()
