"""The admin API against its own OpenAPI document (schemathesis, property
based): every operation, with generated paths, queries and bodies, on a
queue holding messages in every state, answers as documented and never
with a 5xx. The API is served for real (uvicorn on a loopback port) on
SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import update

from postfleet.core.db.engine import create_engine
from postfleet.core.db.models import Message, Recipient
from postfleet.core.db.status import MessageState, RecipientStatus
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.core.routing.store import RoutingView
from postfleet.core.testing.ports import wait_port
from postfleet.qmgr.api import make_api
from postfleet.qmgr.scheduler import Scheduler
from postfleet.qmgr.settings import QmgrSettings

from .conftest import queue_message

pytestmark = pytest.mark.slow


async def _fill(engine: object) -> None:
    """One message in each queue: incoming, active, deferred, hold."""
    from sqlalchemy.ext.asyncio import AsyncEngine
    assert isinstance(engine, AsyncEngine)
    await queue_message(engine, ["a@y.test"])
    for state in (MessageState.ACTIVE, MessageState.DEFERRED, MessageState.HOLD):
        qid = await queue_message(engine, ["b@z.test", "c@y.test"], sender="")
        async with engine.begin() as conn:
            await conn.execute(update(Message).where(Message.queue_id == qid)
                               .values(state=state))
            if state is MessageState.DEFERRED:
                await conn.execute(update(Recipient).where(Recipient.queue_id == qid).values(
                    status=RecipientStatus.DEFERRED, dsn_status="4.4.1",
                    next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
                    last_reply="connect to z.test[192.0.2.1]:25: Connection refused"))


@pytest.fixture
def api_url(database_url: str) -> Iterator[str]:
    """qmgr's API served by uvicorn in a thread with its own event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()
    holder: dict[str, uvicorn.Server] = {}

    async def serve() -> None:
        engine = create_engine(database_url)
        await _fill(engine)

        async def publish(_job: delivery_pb2.Job) -> None:
            return None

        scheduler = Scheduler(QmgrSettings(qmgr_owner="q1"), engine, RoutingView(), publish)
        server = uvicorn.Server(uvicorn.Config(make_api(engine, scheduler), log_level="error",
                                               lifespan="off"))
        holder["server"] = server
        ready.set()
        try:
            await server.serve(sockets=[sock])
        finally:
            await engine.dispose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    wait_port(port)
    yield f"http://127.0.0.1:{port}"
    holder["server"].should_exit = True
    thread.join(30)


CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          response_schema_conformance, negative_data_rejection]


def test_every_operation_answers_as_documented_never_500(api_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation, mode in itertools.product(operations, GenerationMode):
        # positive: valid requests; negative: requests the schema forbids,
        # which must be refused (4xx), never crash the API
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(checks=CHECKS)

        check()
