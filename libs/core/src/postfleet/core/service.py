"""Service lifecycle shared by every role: signals, health endpoints, drain.

A role's ``main`` builds its parts, then::

    async with Service("qmgr", settings) as svc:
        ...start work...
        svc.set_ready(True)
        await svc.stopping.wait()      # SIGTERM / SIGINT
        ...drain: stop taking work, finish what is in hand...

``/healthz`` answers 200 while the process lives, ``/readyz`` 200 only while
the role takes work (false during start-up and drain), ``/metrics`` is the
Prometheus registry. The HTTP app is Starlette on uvicorn; a role may mount
more routes (qmgr's admin API) with ``extra_routes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from postfleet.core.settings import CommonSettings

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    # The role owns signal handling; uvicorn must not take SIGTERM from it.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Service:
    def __init__(
        self,
        name: str,
        settings: CommonSettings,
        *,
        extra_app: Any | None = None,
        checks: dict[str, Callable[[], bool]] | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.stopping = asyncio.Event()
        self._ready = False
        self._checks = checks or {}
        self._extra_app = extra_app
        self._server: _Server | None = None
        self._server_task: asyncio.Task[None] | None = None
        self.http_port: int | None = None

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def add_check(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def request_stop(self) -> None:
        self.stopping.set()

    # -- HTTP ---------------------------------------------------------------
    def _routes(self) -> list[BaseRoute]:
        routes: list[BaseRoute] = [
            Route("/healthz", self._healthz),
            Route("/readyz", self._readyz),
            Route("/metrics", self._metrics),
        ]
        if self._extra_app is not None:
            routes.append(Mount("/", app=self._extra_app))
        return routes

    async def _healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": self.name})

    async def _readyz(self, _request: Request) -> Response:
        failing = [name for name, check in self._checks.items() if not check()]
        ok = self._ready and not failing and not self.stopping.is_set()
        body = {"ready": ok, "role": self.name, "failing": failing}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def _metrics(self, _request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def _start_http(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.http_host, self.settings.http_port))
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            Starlette(routes=self._routes()), log_level="warning", access_log=False,
            lifespan="off",
        )
        self._server = _Server(config)
        self._server_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        log.info("%s health and metrics on http://%s:%d/", self.name,
                 self.settings.http_host, self.http_port)

    # -- context --------------------------------------------------------------
    async def __aenter__(self) -> Service:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._start_http()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ready = False
        if self._server is not None:
            self._server.should_exit = True
        if self._server_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, 5)
        log.info("%s stopped", self.name)
