"""The Debian programs tests run as real peers (dnsmasq, Dovecot, ...):
finding them and stopping them.

A missing peer fails the test that needs it with the package to install
(`make peers` installs them all); it is never skipped, because a test that
did not run proves nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["peer_binary", "stop_process"]


def peer_binary(name: str, package: str) -> str:
    """The path of program ``name``: on PATH, or in /usr/sbin (where Debian
    puts daemons, often off a user's PATH). RuntimeError naming ``package``
    when it is not installed."""
    sbin = f"/usr/sbin/{name}"
    found = shutil.which(name) or (sbin if os.path.exists(sbin) else None)
    if not found:
        raise RuntimeError(f"{name} not found: run `make peers` (Debian package {package})")
    return found


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL when it has not exited after ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
