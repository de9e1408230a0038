"""Small socket helpers shared by the launcher and the test fixtures."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the caller binds it soon)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
