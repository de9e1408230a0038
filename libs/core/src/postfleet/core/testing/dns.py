"""A real DNS server for tests: dnsmasq on a free loopback port (UDP and TCP),
answering from a zone description and nothing else — never the machine's
own resolver, never the Internet.

    zone = {
        "domains": ["test"],          # answered here: unknown names are NXDOMAIN
        "mx": {"example.test": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "hosts": {"mx1.example.test": "127.0.0.2", "mx2.example.test": ["127.0.0.3"]},
        "txt": {"example.test": "v=spf1 -all"},
        "ptr": {"2.0.0.127.in-addr.arpa": "mx1.example.test"},
        "cname": {"www.example.test": "mx1.example.test"},
    }
    with DnsServer(tmp_path / "dns", zone) as dns:
        dns.nameserver        # "127.0.0.1:PORT", for dns_nameservers / dnspython
        dns.queries()         # [("MX", "example.test"), ...] asked so far

"domains" defaults to ["test"] (``local=/test/``). A name outside them has no
upstream to go to: dnsmasq answers REFUSED, which a resolver takes as a
server failure (try again) — handy for testing temporary DNS errors. A name
inside them without the record asked for gets an empty answer (NODATA).
"hosts" values may mix IPv4 and IPv6 addresses (``host-record=``, which also
answers the reverse lookups). Records are served with TTL 0, so a restart
with a new zone (``restart(zone)``) takes effect at once.

"txt" values are one string or a list of strings (the strings of one TXT
record); "extra" takes raw dnsmasq lines.

Started as root, dnsmasq switches to user ``nobody`` and group ``dip`` once
its port and log file are open (it chowns the log to nobody); a minimal image
may lack either, and nothing is gained for a loopback test server, so as
root it is told to stay root (``user=root``). As another user it simply runs
as that user.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from postfleet.core.testing.peers import peer_binary, stop_process
from postfleet.core.testing.ports import wait_port

_QUERY = re.compile(r"query\[(\w+)\] (\S+) from ")


def free_dns_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


def _many(value: Any) -> list[Any]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def zone_config(zone: Mapping[str, Any]) -> list[str]:
    """dnsmasq configuration lines for a zone description."""
    lines: list[str] = []
    for domain in zone.get("domains", ["test"]):
        lines.append(f"local=/{domain}/")
    for name, records in zone.get("mx", {}).items():
        for pref, host in records:
            lines.append(f"mx-host={name},{host},{int(pref)}")
    for name, addresses in zone.get("hosts", {}).items():
        lines.append(f"host-record={name}," + ",".join(_many(addresses)))
    for name, texts in zone.get("txt", {}).items():
        lines.append(f"txt-record={name}," + ",".join(_quote(t) for t in _many(texts)))
    for name, target in zone.get("ptr", {}).items():
        lines.append(f"ptr-record={name},{target}")
    for name, target in zone.get("cname", {}).items():
        lines.append(f"cname={name},{target}")
    for line in zone.get("extra", []):  # anything else dnsmasq understands
        lines.append(str(line))
    return lines


class DnsServer:
    def __init__(
        self, workdir: Path, zone: Mapping[str, Any] | None = None, port: int | None = None
    ) -> None:
        self.workdir = workdir
        self.zone: Mapping[str, Any] = zone or {}
        self.host = "127.0.0.1"
        self.port = port or free_dns_port(self.host)
        self.conf = workdir / "dnsmasq.conf"
        self.log_path = workdir / "dnsmasq.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        """``127.0.0.1:PORT``: the value for the dns_nameservers setting."""
        return f"{self.host}:{self.port}"

    def _write_conf(self) -> None:
        lines = [
            f"port={self.port}",
            f"listen-address={self.host}",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "no-negcache",
            "log-queries",
            f"log-facility={self.log_path}",
            "pid-file=",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        lines += zone_config(self.zone)
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self) -> DnsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_conf()
        out = open(self.workdir / "dnsmasq.out", "ab")
        self.proc = subprocess.Popen(
            [peer_binary("dnsmasq", "dnsmasq"), "--keep-in-foreground", f"--conf-file={self.conf}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        out.close()
        try:
            wait_port(self.port, self.host, timeout=10)
        except TimeoutError:
            self.stop()
            text = (self.workdir / "dnsmasq.out").read_text(errors="replace")
            raise RuntimeError(f"dnsmasq did not start: {text}") from None
        if self.proc.poll() is not None:
            text = (self.workdir / "dnsmasq.out").read_text(errors="replace")
            raise RuntimeError(f"dnsmasq exited: {text}")
        return self

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)
        self.proc = None

    def restart(self, zone: Mapping[str, Any] | None = None) -> DnsServer:
        """Serve a new zone on the same port."""
        self.stop()
        if zone is not None:
            self.zone = zone
        return self.start()

    def queries(self) -> list[tuple[str, str]]:
        """(type, name) of every query received so far, in order."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return [(m.group(1), m.group(2)) for m in _QUERY.finditer(text)]

    def clear_queries(self) -> None:
        """Forget the queries logged so far (truncates the log)."""
        if self.log_path.exists():
            with open(self.log_path, "r+b") as log:
                log.truncate(0)

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
