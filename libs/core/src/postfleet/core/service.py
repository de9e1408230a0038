"""Service lifecycle shared by every role: signals, health endpoints, drain.

A role's ``main`` builds its parts, then::

    async with Service("qmgr", settings) as svc:
        ...start work...
        svc.set_ready(True)
        await svc.stopping.wait()      # SIGTERM / SIGINT
        ...drain: stop taking work, finish what is in hand...

Once asked to stop, a role has its drain time (``drain_timeout``, the
role's own setting) plus STOP_GRACE_S to exit; past that a watchdog thread
writes every thread's and task's stack to stderr and ends the process, as Postfix's
daemons end themselves when their watchdog timer runs out (its
daemon_timeout, for a daemon stuck in one request). Whatever holds a role
up (a peer gone mid-drain, a bug), it does not outlive its launcher or
pod by more than that bound, and its log says where it was stuck.

``/healthz`` answers 200 while the process lives, ``/readyz`` 200 only while
the role takes work (false during start-up and drain), ``/metrics`` is the
Prometheus registry.

Two servers for those three GETs: a role with an API of its own (qmgr's
admin API, FastAPI, ``extra_app``) runs Starlette on uvicorn and mounts it;
every other role answers them with a few lines of asyncio below (written by
hand on purpose: an ASGI server costs each of those processes several MiB
of memory to answer probes and Prometheus, which send a GET and read the
reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from postfleet.core.settings import CommonSettings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 5.0
MAX_HEADER_LINES = 100
# Beyond the role's drain time: closing its connections (the bus, the
# queue store, gRPC's 10 s grace in cleanup) and the process's own exit.
STOP_GRACE_S = 15.0
_watchdog_enabled = False


def enable_stop_watchdog() -> None:
    """For a role's own process (core.runtime.run_role): the watchdog ends
    the whole process, so a role run inside another program (a test) has
    none -- its caller decides how long to wait."""
    global _watchdog_enabled
    _watchdog_enabled = True


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Service:
    def __init__(
        self,
        name: str,
        settings: CommonSettings,
        *,
        extra_app: Any | None = None,
        checks: dict[str, Callable[[], bool]] | None = None,
        drain_timeout: float = 0.0,
    ) -> None:
        self.name = name
        self.stop_deadline_s = drain_timeout + STOP_GRACE_S
        self._watchdog: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.settings = settings
        self.stopping = asyncio.Event()
        self._ready = False
        self._checks = checks or {}
        self._extra_app = extra_app
        self._uvicorn: Any = None
        self._server_task: asyncio.Task[None] | None = None
        self._plain: asyncio.Server | None = None
        self.http_port: int | None = None

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def request_stop(self) -> None:
        self.stopping.set()

    def _signalled(self) -> None:
        """SIGTERM or SIGINT: stop, and arm the watchdog."""
        self.request_stop()
        if _watchdog_enabled and self._watchdog is None:
            # A thread, not the loop: it must fire when the loop is what hangs.
            self._watchdog = threading.Timer(self.stop_deadline_s, self._overdue)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _overdue(self) -> None:
        log.error("%s did not stop within %.0fs of being asked to; exiting now "
                  "(every thread's stack follows on stderr)", self.name, self.stop_deadline_s)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self._dump_tasks()
        os._exit(1)

    def _dump_tasks(self) -> None:
        """Where each of the loop's tasks waits (a suspended coroutine is on
        no thread's stack). Read from the watchdog's thread just before the
        process ends: a diagnostic, so a race with the loop only costs lines."""
        if self._loop is None:
            return
        with contextlib.suppress(Exception):
            for task in list(asyncio.all_tasks(self._loop)):
                task.print_stack(limit=20, file=sys.stderr)
        sys.stderr.flush()

    # -- the three answers ----------------------------------------------------
    def healthz(self) -> tuple[int, dict[str, Any]]:
        return 200, {"status": "ok", "role": self.name}

    def readyz(self) -> tuple[int, dict[str, Any]]:
        failing = [name for name, check in self._checks.items() if not check()]
        ok = self._ready and not failing and not self.stopping.is_set()
        return (200 if ok else 503), {"ready": ok, "role": self.name, "failing": failing}

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for a GET."""
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return (200, CONTENT_TYPE_LATEST, generate_latest()) if method in ("GET", "HEAD") \
                else (405, "text/plain", b"")
        probe = {"/healthz": self.healthz, "/readyz": self.readyz}.get(path)
        if probe is None:
            return 404, "application/json", b'{"detail": "Not Found"}'
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b""
        status, doc = probe()
        return status, "application/json", json.dumps(doc).encode()

    # -- HTTP ---------------------------------------------------------------
    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.http_host, self.settings.http_port))
        self.http_port = sock.getsockname()[1]
        return sock

    async def _start_http(self) -> None:
        sock = self._socket()
        if self._extra_app is not None:
            self._server_task = asyncio.create_task(self._serve_asgi(sock))
        else:
            sock.listen(64)
            self._plain = await asyncio.start_server(self._handle, sock=sock)
        log.info("%s health and metrics on http://%s:%d/", self.name,
                 self.settings.http_host, self.http_port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            for _ in range(MAX_HEADER_LINES):  # the headers are not needed
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
                if line in (b"\r\n", b"\n", b""):
                    break
            method, path = [*request.decode("latin-1").split(), "", ""][:2]
            status, ctype, body = self.answer(method, path or "/")
            head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, UnicodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve_asgi(self, sock: socket.socket) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Mount, Route

        async def route(request: Request) -> Response:
            status, ctype, body = self.answer(request.method, request.url.path)
            return Response(body, status_code=status, media_type=ctype)

        class _Server(uvicorn.Server):
            # The role owns signal handling; uvicorn must not take SIGTERM from it.
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        app = Starlette(routes=[Route("/healthz", route), Route("/readyz", route),
                                Route("/metrics", route), Mount("/", app=self._extra_app)])
        self._uvicorn = _Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                               lifespan="off"))
        await self._uvicorn.serve(sockets=[sock])

    # -- context --------------------------------------------------------------
    async def __aenter__(self) -> Service:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled)
        await self._start_http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ready = False
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._server_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, 5)
        if self._plain is not None:
            self._plain.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._plain.wait_closed(), 5)
        log.info("%s stopped", self.name)
