"""swaks, the SMTP test client, as a real peer of the roles under test.

    code, out = await swaks(port, "--from", "a@b.example", "--to", "c@d.example")

runs ``swaks --server 127.0.0.1 --port PORT ...`` and gives its exit status
and its transcript (stdout and stderr together). A peer the tests need is
never skipped: without swaks the test fails and says how to install it
(scripts/install-peers, which ``make test`` runs); a call with any TLS option
(``--tls``, ``--tlsc``, ``--tls-on-connect``, ``--tls-verify``, ...) also needs
swaks's TLS support (Net::SSLeay / IO::Socket::SSL, ``swaks --support``
printing "=== TLS supported") and fails the same way without it.

Postfix parameters: none.
"""

from __future__ import annotations

import asyncio
import functools
import re
import shutil
import subprocess

import pytest

MISSING = "swaks is not installed: run make test / scripts/install-peers"
NO_TLS = ("swaks has no TLS support (it needs Net::SSLeay and IO::Socket::SSL): "
          "run make test / scripts/install-peers")
TLS_SUPPORTED = "=== TLS supported"
# -tls, --tlsc, --tls-on-connect, --tls-verify, ...: a word, not a value like "--tls in a body".
_TLS_OPTION = re.compile(r"--?tls[a-z-]*")


def swaks_binary() -> str:
    """The swaks command; fails the calling test when it is not installed."""
    path = shutil.which("swaks")
    if path is None:
        pytest.fail(MISSING, pytrace=False)
    return path


@functools.cache
def _support(path: str) -> str:
    # `swaks --support` lists every capability ("=== X supported" or
    # "*** X not available: ...") and exits non-zero when one is missing.
    done = subprocess.run([path, "--support"], capture_output=True, text=True, timeout=30)
    return done.stdout + done.stderr


def require_tls(path: str) -> None:
    """Fail the calling test unless this swaks can speak TLS."""
    if not any(line.startswith(TLS_SUPPORTED) for line in _support(path).splitlines()):
        pytest.fail(NO_TLS, pytrace=False)


def _wants_tls(args: tuple[str, ...]) -> bool:
    return any(_TLS_OPTION.fullmatch(arg) for arg in args)


async def swaks(
    port: int, *args: str, host: str = "127.0.0.1", timeout: float = 30.0,
    stdin: bytes | None = None,
) -> tuple[int, str]:
    """Run swaks against ``host:port`` with ``args``: (exit status, transcript);
    ``stdin`` is what swaks reads (``--data -`` sends it as the message)."""
    path = swaks_binary()
    if _wants_tls(args):
        await asyncio.to_thread(require_tls, path)
    proc = await asyncio.create_subprocess_exec(
        path, "--server", host, "--port", str(port), *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(errors="replace")
