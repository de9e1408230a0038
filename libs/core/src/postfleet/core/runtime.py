"""What every role's ``main`` shares: logging, the event loop, the queue
store engine (migrated first), the NATS connection with its streams, the
live routing view, and their teardown in reverse order whatever happens.

A role's ``run`` is then only its own wiring::

    async def run(settings: QmgrSettings) -> None:
        async with role_runtime("qmgr", settings, routing=True) as rt:
            ...build the role's parts on rt.engine, rt.nc, rt.js, rt.routing...
            async with Service("qmgr", settings) as svc:
                ...

    def main() -> None:
        run_role("qmgr", QmgrSettings, run)

Nothing connects at import time: all of it happens inside ``run``.

Postfix parameters: none (this is master(8)'s part in starting a daemon).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext

from postfleet.core.bus.connect import close, connect, ensure_bus
from postfleet.core.logs import setup_logging
from postfleet.core.maillog import setup_maillog
from postfleet.core.routing.store import RoutingView
from postfleet.core.service import enable_stop_watchdog
from postfleet.core.settings import CommonSettings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

S = TypeVar("S", bound=CommonSettings)


@dataclass
class Runtime:
    nc: Client
    js: JetStreamContext
    engine: AsyncEngine | None
    routing: RoutingView | None

    def db(self) -> AsyncEngine:
        assert self.engine is not None, "this role runs without the queue store"
        return self.engine

    def routes(self) -> RoutingView:
        assert self.routing is not None, "this role runs without the routing view"
        return self.routing


@contextlib.asynccontextmanager
async def role_runtime(
    name: str, settings: CommonSettings, *, database: bool = True, routing: bool = False,
    writer: bool = True, pool_size: int = 5,
) -> AsyncIterator[Runtime]:
    """Open what the role needs, yield it, close it all on the way out.

    ``database``: migrate the queue store (so a lone role can start on an
    empty database) and open an engine; ``writer=False`` (a role that only
    reads) reads outside any transaction. ``routing``: follow the
    routing snapshot in NATS KV (DESIGN invariant 6)."""
    async with contextlib.AsyncExitStack() as stack:
        engine: AsyncEngine | None = None
        if database:
            engine = await _migrated_engine(settings.database_url, writer, pool_size)
            stack.push_async_callback(engine.dispose)
        nc = await connect(settings.nats_url, name)
        stack.push_async_callback(close, nc)
        js = await ensure_bus(nc)
        view: RoutingView | None = None
        if routing:
            view = RoutingView()
            await view.start(js)
            stack.push_async_callback(view.stop)
        yield Runtime(nc, js, engine, view)


async def _migrated_engine(url: str, writer: bool, pool_size: int) -> AsyncEngine:
    # Imported here: a role without the queue store (ingress-smtp) never
    # loads SQLAlchemy (memory, issue 13).
    from postfleet.core.db.engine import create_engine
    from postfleet.core.db.migrate import upgrade

    migrator = create_engine(url)
    try:
        await upgrade(migrator)
    finally:
        await migrator.dispose()
    return create_engine(url, writer=writer, pool_size=pool_size)


def run_role(name: str, settings_cls: type[S], run: Callable[[S], Awaitable[None]]) -> None:
    """A role's ``main``: settings from env and the config file, logging, the
    loop -- uvloop where it is installed (every role spends much of its CPU
    in the event loop; bench/README.md has the figures). ``--postconf`` is
    answered before this, by the role's ``__main__`` (core.postconf.role_entry)."""
    settings = settings_cls()
    setup_logging(name, settings.log_format, settings.log_level)
    setup_maillog(settings.syslog_name, settings.maillog_file, settings.myhostname)
    _install_uvloop()
    enable_stop_watchdog()  # its own process: a stop that hangs ends it
    asyncio.run(_call(run, settings))


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on this platform: asyncio's own loop
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _call(run: Callable[[S], Awaitable[None]], settings: S) -> None:
    await run(settings)
