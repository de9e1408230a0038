"""`postfleet run all`: the embedded default (SQLite under var/, the wheel's
NATS) runs every role, restarts one that dies, answers `postfleet queue`,
and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from postfleet.core.testing.ports import free_port, wait_port
from postfleet.core.testing.sink import SmtpSink

from .conftest import FAST_QMGR, eventually, send

pytestmark = pytest.mark.slow

POSTFLEET = str(Path(sys.executable).parent / "postfleet")


def _children(pid: int, module: str) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if module in child.cmdline():
                out.append(child)
        except psutil.Error:
            continue
    return out


async def test_run_all_serves_restarts_and_stops_cleanly(
        tmp_path: Path, smtp_sink: SmtpSink) -> None:
    port = free_port()
    config = tmp_path / "postfleet.yaml"
    config.write_text(yaml.safe_dump({
        "myhostname": "mx.runall.test",
        "ingress_smtp": {"listeners": [{"name": "smtp", "address": "127.0.0.1",
                                        "port": port}],
                         "smtpd_peername_lookup": False},  # no off-box DNS
        "qmgr": dict(FAST_QMGR),
        "routing": {"relay_domains": ["example.test"],
                    "transport_maps": {"example.test": f"smtp:{smtp_sink.nexthop}"}},
    }))
    out = tmp_path / "launcher.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
    with open(out, "wb") as fh:
        launcher = subprocess.Popen(
            [POSTFLEET, "run", "all", "--config", str(config), "--var-dir",
             str(tmp_path / "var")], stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        await asyncio.to_thread(wait_port, port, "127.0.0.1", 60)
        await eventually(lambda: b"queue admin API" in out.read_bytes(), what="start-up")
        printed = out.read_text()
        assert f"SMTP listener smtp on 127.0.0.1:{port}" in printed
        assert "NATS nats://127.0.0.1:" in printed and "postfleet.db" in printed
        assert (tmp_path / "var" / "postfleet.db").exists()

        await send(port, "bob@example.test", subject="first")
        await smtp_sink.wait_for(1)

        # kill -9 a role: the launcher restarts it, mail keeps flowing.
        (delivery,) = _children(launcher.pid, "postfleet.delivery")
        delivery.kill()
        await eventually(
            lambda: b"delivery-1 killed by signal 9; restarting now" in out.read_bytes(),
            what="the restart notice")
        await eventually(lambda: len(_children(launcher.pid, "postfleet.delivery")) == 1,
                         what="a new delivery process")
        await send(port, "carol@example.test", subject="second")
        await smtp_sink.wait_for(2)

        listing = await eventually(lambda: _queue_list(tmp_path), what="an empty queue")
        assert listing == "Mail queue is empty"

        # Two ingress processes share the port: with one killed, every client
        # is still served (by the other) while it comes back.
        ingress = _children(launcher.pid, "postfleet.ingress_smtp")
        assert len(ingress) == 2
        ingress[0].kill()
        await asyncio.to_thread(psutil.wait_procs, [ingress[0]], 10)  # gone, with its sessions
        for i in range(10):
            await send(port, "dave@example.test", subject=f"while one smtpd is down {i}")
        await smtp_sink.wait_for(12)
        await eventually(lambda: len(_children(launcher.pid, "postfleet.ingress_smtp")) == 2,
                         what="the killed ingress process back")

        # qmgr keeps its slot's identity across a restart (its leases).
        (qmgr,) = _children(launcher.pid, "postfleet.qmgr")
        owner = qmgr.environ()["POSTFLEET_QMGR_OWNER"]
        assert owner.endswith("-qmgr-1")
        qmgr.kill()
        again = await eventually(lambda: _restarted(launcher.pid, "postfleet.qmgr", qmgr.pid),
                                 what="qmgr back")
        assert again.environ()["POSTFLEET_QMGR_OWNER"] == owner

        children = psutil.Process(launcher.pid).children(recursive=True)
        launcher.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(launcher.wait, 60)
        assert code == 0, out.read_text()
        assert "postfleet: stopped" in out.read_text()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left running: {[p.pid for p in alive]}"
    finally:
        if launcher.poll() is None:
            launcher.kill()  # its roles get SIGTERM from the kernel (PDEATHSIG)
            launcher.wait(10)


def _restarted(pid: int, module: str, old: int) -> psutil.Process | None:
    fresh = [p for p in _children(pid, module) if p.pid != old and _running(p)]
    return fresh[0] if len(fresh) == 1 else None


def _queue_list(tmp_path: Path) -> str:
    time.sleep(0.2)
    res = subprocess.run([POSTFLEET, "queue", "list", "--var-dir", str(tmp_path / "var")],
                         capture_output=True, text=True, timeout=30)
    text = res.stdout.strip()
    return text if text == "Mail queue is empty" else ""


async def test_roles_do_not_outlive_a_killed_launcher(tmp_path: Path) -> None:
    """Killed -9, the launcher cannot stop its roles: the kernel sends each
    SIGTERM (PR_SET_PDEATHSIG) and each stops by itself. Nothing is in
    flight, so each must be gone within 30 s and none may need its stop
    watchdog; when one is not, the test waits 20 s more so that the
    watchdog (drain time + STOP_GRACE_S) can write its stacks into the log
    it then shows."""
    port = free_port()
    config = tmp_path / "postfleet.yaml"
    config.write_text(yaml.safe_dump({"ingress_smtp": {"listeners": [
        {"name": "smtp", "address": "127.0.0.1", "port": port}]}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTFLEET_")}
    log_path = tmp_path / "run-all.log"
    with open(log_path, "wb") as log:
        launcher = subprocess.Popen(
            [POSTFLEET, "run", "all", "--config", str(config), "--var-dir",
             str(tmp_path / "var")], stdout=log, stderr=log, env=env)
    try:
        await asyncio.to_thread(wait_port, port, "127.0.0.1", 60)
        children = psutil.Process(launcher.pid).children(recursive=True)
        names = {p.pid: " ".join(p.cmdline()[-2:]) for p in children}
        assert len(children) >= 5  # four roles and NATS
    finally:
        launcher.kill()
        launcher.wait(10)
    _, alive = psutil.wait_procs(children, timeout=30)
    # A dead child nobody reaps yet (a zombie) has exited all the same.
    alive = [p for p in alive if _running(p)]
    if alive:  # failing: give their watchdogs time to write where they hang
        psutil.wait_procs(alive, timeout=20)
    for proc in alive:
        if _running(proc):
            proc.kill()
    log_text = log_path.read_text(errors="replace")
    assert alive == [], f"orphaned: {[names[p.pid] for p in alive]}\n{log_text[-6000:]}"
    assert "did not stop within" not in log_text, log_text[-6000:]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
