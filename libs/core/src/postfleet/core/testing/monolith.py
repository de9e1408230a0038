"""``postfleet run all`` as a test's real peer: the launcher on a config
file, its SMTP listener on a free loopback port, its admin API from
var/run.json, and a clean SIGTERM stop (every role exits, so their logs
are complete).

    async with RunAll(tmp_path, {"routing": {...}}) as mta:
        ...mta.port, mta.api, mta.cli("queue", "list")...

Postfix parameters: none (the config given is the caller's).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from postfleet.core.testing.ports import free_port, wait_port
from postfleet.core.testing.waiting import eventually

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


class RunAll:
    def __init__(self, tmp_path: Path, config: dict[str, Any], *, port: int | None = None,
                 address: str = "127.0.0.1") -> None:
        self.dir = tmp_path
        self.port = port or free_port(address)
        self.address = address
        self.var = tmp_path / "var"
        self.out = tmp_path / "launcher.out"
        ingress = dict(config.get("ingress_smtp") or {})
        ingress.setdefault("listeners", [{"name": "smtp", "address": address,
                                          "port": self.port}])
        ingress.setdefault("smtpd_peername_lookup", False)  # no off-box DNS
        self.config = {**config, "ingress_smtp": ingress}
        self.config_file = tmp_path / "postfleet.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = ""

    def _launch(self) -> subprocess.Popen[bytes]:
        self.config_file.write_text(yaml.safe_dump(self.config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
        with open(self.out, "wb") as fh:
            return subprocess.Popen(
                [POSTFLEET, "run", "all", "--config", str(self.config_file), "--var-dir",
                 str(self.var)], stdout=fh, stderr=subprocess.STDOUT, env=env)

    async def __aenter__(self) -> RunAll:
        self.proc = self._launch()
        try:
            await asyncio.to_thread(wait_port, self.port, self.address, 90)
            await eventually(lambda: b"queue admin API" in self.out.read_bytes(), 60,
                             what="start-up")
            self.api = json.loads((self.var / "run.json").read_text())["api"]
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> int | None:
        """SIGTERM, as `postfix stop`; the launcher's exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()  # its roles get SIGTERM from the kernel (PDEATHSIG)
            return await asyncio.to_thread(proc.wait, 10)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``postfleet ARGS`` against this instance (its var dir, its API)."""
        env = {**os.environ, "POSTFLEET_API": self.api}
        res = subprocess.run([POSTFLEET, *args], capture_output=True, text=True, timeout=60,
                             env=env, cwd=self.dir)
        if check and res.returncode != 0:
            raise AssertionError(f"postfleet {' '.join(args)}: exit {res.returncode}\n"
                                 f"{res.stdout}{res.stderr}")
        return res
