"""A certificate authority for TLS tests, made with the openssl command: a CA
of the test's own, and server certificates it issues for the names a test
needs (a matching name, a wrong one, an IP address).

    ca = TestCa(tmp_path / "ca")
    cert, key = ca.issue("mx", dns=["mx.example.test"])
    ca.server_context(cert, key)     # an ssl.SSLContext for a server
    ca.ca_file                       # the trust anchor for a client

openssl is a process: tests that use this are slow (the ``test_ca``
fixture marks them). A missing openssl fails the test, naming the package.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path

from postfleet.core.testing.peers import peer_binary

_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


class TestCa:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "postfleet test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.crt"
        self._run("req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
                  "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def _run(self, *args: str) -> None:
        done = subprocess.run([peer_binary("openssl", "openssl"), *args], cwd=self.directory,
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr}")

    def issue(
        self, name: str, dns: Sequence[str] = (), ips: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A server certificate (and its key) for these names, signed by this CA."""
        alt = ",".join([*(f"DNS:{d}" for d in dns), *(f"IP:{i}" for i in ips)])
        (self.directory / f"{name}.ext").write_text(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={alt}\n")
        common = (list(dns) or list(ips) or [name])[0]
        self._run("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                  "-subj", f"/CN={common}")
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                  "-out", f"{name}.crt")
        return self.directory / f"{name}.crt", self.directory / f"{name}.key"

    @staticmethod
    def server_context(
        cert: Path, key: Path, maximum: ssl.TLSVersion | None = None
    ) -> ssl.SSLContext:
        """A server's SSL context; ``maximum`` caps the protocol (to make a
        client that wants more fail its handshake)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        if maximum is not None:
            context.maximum_version = maximum
        return context
