"""Small socket helpers shared by the launcher and the test fixtures."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ports below the kernel's ephemeral range: a port picked here and bound a
# moment later cannot meanwhile become the source port of some outgoing
# connection (the kernel hands out ephemeral ports only from its range).
_LOWEST = 10_000
_ATTEMPTS = 50


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default range starts here


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the caller binds it soon),
    outside the ephemeral range where the kernel allows it; else any free one."""
    high = _ephemeral_low() - 1
    for _ in range(_ATTEMPTS if high > _LOWEST else 0):
        port = random.randint(_LOWEST, high)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
