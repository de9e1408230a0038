"""OpenDKIM for tests: the milter Postfix sites sign with, on a free loopback
port with a private configuration, signing for one domain with a key that
``opendkim-genkey`` made.

    with OpenDkim(tmp_path / "opendkim", "example.test", "s1") as milter:
        milter.socket          # "inet:127.0.0.1:PORT" for smtpd_milters
        milter.private_key     # the PEM key opendkim-genkey wrote

It signs (Mode sv) mail from InternalHosts (127.0.0.1, the default) whose
From: is in the domain, relaxed/relaxed; RequireSafeKeys is off because the
key lives under the test's temporary directory.

Postfix parameters: none.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import free_port, wait_port

CONF = """\
Syslog                  no
LogWhy                  yes
Mode                    sv
Domain                  {domain}
Selector                {selector}
KeyFile                 {key}
Canonicalization        relaxed/relaxed
Socket                  inet:{port}@127.0.0.1
PidFile                 {dir}/opendkim.pid
RequireSafeKeys         false
InternalHosts           127.0.0.1
TrustAnchorFile         /dev/null
"""


class OpenDkim:
    def __init__(self, workdir: Path, domain: str, selector: str = "s1") -> None:
        self.dir = workdir
        self.domain = domain
        self.selector = selector
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    @property
    def key_file(self) -> Path:
        return self.dir / f"{self.selector}.private"

    @property
    def private_key(self) -> bytes:
        return self.key_file.read_bytes()

    def log(self) -> str:
        path = self.dir / "opendkim.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> OpenDkim:
        binary = peer_binary("opendkim", "opendkim")
        genkey = peer_binary("opendkim-genkey", "opendkim-tools")
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([genkey, "-b", "2048", "-d", self.domain, "-s", self.selector,
                        "-D", str(self.dir)], check=True, capture_output=True)
        conf = self.dir / "opendkim.conf"
        conf.write_text(CONF.format(domain=self.domain, selector=self.selector,
                                    key=self.key_file, port=self.port, dir=self.dir))
        self.proc = subprocess.Popen(
            [binary, "-f", "-x", str(conf)], stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "opendkim.log", "wb"), stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=10)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"opendkim did not start: {self.log()}") from None
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        self.proc = None

    def __enter__(self) -> OpenDkim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
