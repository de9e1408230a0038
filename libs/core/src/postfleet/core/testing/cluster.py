"""Run postfleet roles as real processes for end-to-end tests.

Each role is ``python -m postfleet.<package>`` with its settings in the
environment, exactly as ``postfleet run ROLE`` starts it, so a test can
``kill -9`` any of them and start it again.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from postfleet.core.roles import ROLE_MODULES
from postfleet.core.testing.ports import free_port, wait_port

# A DNS server address on loopback where nothing listens.
LOOPBACK_NOWHERE = "127.0.0.1:1"

# The roles a cluster runs, in start order (ingress last: it takes mail).
CLUSTER_ROLES = ("cleanup", "qmgr", "delivery", "ingress-smtp")
# Roles a test may add to a cluster (``Cluster(..., extra_roles=("filter",))``).
OPTIONAL_ROLES = ("filter",)


@dataclass
class RoleProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    http_port: int
    proc: subprocess.Popen[bytes] | None = None
    module: str = ""

    def start(self, wait: bool = True) -> RoleProcess:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module or ROLE_MODULES[self.name]],
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.http_port}/readyz"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM without waiting (stop() then waits)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM: the drain case."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """A whole postfleet on given NATS and database URLs, one process per role."""

    workdir: Path
    database_url: str
    nats_url: str
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    smtp_port: int = field(default_factory=free_port)
    cleanup_port: int = field(default_factory=free_port)
    roles: dict[str, RoleProcess] = field(default_factory=dict)
    extra_roles: tuple[str, ...] = ()
    extra: dict[str, list[RoleProcess]] = field(default_factory=dict)
    # Where lookups go unless the test passes its own dnsmasq: an empty
    # dnsmasq answers REFUSED at once (the plugin's refusing_dns); a closed
    # port makes each lookup wait out its whole lifetime (UDP hears no ICMP).
    nameserver: str = LOOPBACK_NOWHERE

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "postfleet.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        for name in (*CLUSTER_ROLES, *self.extra_roles):
            self.roles[name] = RoleProcess(
                name, self._env_for(name), self.workdir / f"{name}.log", free_port()
            )
        # qmgr keeps one identity across restarts, as a pod's container does
        # (its pod name): a restarted qmgr takes its own leases back at once.
        self.roles["qmgr"].env.setdefault(
            "POSTFLEET_QMGR_OWNER", f"qmgr-{secrets.token_hex(4)}")

    def _env_for(self, role: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
        env.update(
            POSTFLEET_CONFIG=str(self.config_path),
            POSTFLEET_DATABASE_URL=self.database_url,
            POSTFLEET_NATS_URL=self.nats_url,
            POSTFLEET_CLEANUP_ADDRESS=f"127.0.0.1:{self.cleanup_port}",
            POSTFLEET_CLEANUP_LISTEN=f"127.0.0.1:{self.cleanup_port}",
            POSTFLEET_LISTENERS=json.dumps(
                [{"name": "smtp", "address": "127.0.0.1", "port": self.smtp_port}]
            ),
            POSTFLEET_MYHOSTNAME="mx.postfleet.test",
            POSTFLEET_LOG_FORMAT="text",
            # Tests never ask this machine's resolver (it is off-box): smtpd's
            # reverse lookups are off, and every other lookup goes to a
            # loopback server that knows nothing unless the test passes
            # its own dnsmasq (POSTFLEET_DNS_NAMESERVERS=dns.nameserver).
            POSTFLEET_SMTPD_PEERNAME_LOOKUP="false",
            POSTFLEET_DNS_NAMESERVERS=self.nameserver,
        )
        env.update(self.env)
        return env

    def role_env(self, role: str) -> dict[str, str]:
        return self.roles[role].env

    @property
    def all_roles(self) -> tuple[str, ...]:
        return (*CLUSTER_ROLES, *self.extra_roles)

    def start(self, *names: str) -> None:
        chosen = names or self.all_roles
        for name in chosen:  # start together, then wait: imports overlap
            self.roles[name].http_port = free_port()
            self.roles[name].env["POSTFLEET_HTTP_PORT"] = str(self.roles[name].http_port)
            self.roles[name].start(wait=False)
        for name in chosen:
            self.roles[name].wait_ready()
        if not names or "ingress-smtp" in names:
            wait_port(self.smtp_port)

    def kill(self, *names: str) -> None:
        for name in names or self.all_roles:
            self.roles[name].kill()
        for replica in self._extra(names):
            replica.kill()

    def stop(self, *names: str) -> None:
        """SIGTERM to all at once (as `postfix stop` has master do), then
        wait for each: their drains overlap."""
        chosen = [*self._extra(names), *(self.roles[n] for n in names or self.all_roles)]
        for process in chosen:
            process.terminate()
        for process in chosen:
            process.stop()

    # -- replicas: a role scaled like a Deployment ------------------------------
    def replicas(self, role: str) -> list[RoleProcess]:
        """The role's running processes, the first one included."""
        extra = self.extra.get(role, [])
        return [p for p in [self.roles[role], *extra] if p.running]

    def scale(self, role: str, count: int, grace: float = 30.0) -> None:
        """Up: start replicas (each ready before it counts). Down as Kubernetes
        does it: SIGTERM the newest, SIGKILL one that overstays ``grace``."""
        extra = self.extra.setdefault(role, [])
        while len(self.replicas(role)) < count:
            n = len(extra) + 2
            replica = RoleProcess(f"{role}-{n}", dict(self.roles[role].env),
                                  self.workdir / f"{role}-{n}.log", free_port())
            replica.env["POSTFLEET_HTTP_PORT"] = str(replica.http_port)
            replica.module = ROLE_MODULES[role]
            owner = replica.env.pop("POSTFLEET_QMGR_OWNER", "")
            if owner:  # two live qmgrs never share a lease identity
                replica.env["POSTFLEET_QMGR_OWNER"] = f"{owner}-{n}"
            extra.append(replica.start())
        for replica in reversed(self.replicas(role)):
            if len(self.replicas(role)) <= count:
                break
            replica.stop(timeout=grace)

    def _extra(self, names: tuple[str, ...]) -> list[RoleProcess]:
        return [r for name in (names or self.all_roles) for r in self.extra.get(name, [])]

    def logs(self) -> str:
        every = [*self.roles.items(),
                 *((r.name, r) for rs in self.extra.values() for r in rs)]
        return "\n".join(f"==== {n}\n{r.log()}" for n, r in every)
