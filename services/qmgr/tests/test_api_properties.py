"""The admin API against its own OpenAPI document (schemathesis, property
based): every operation, with generated paths, queries and bodies, on a
queue holding messages in every state, answers as documented and never
with a 5xx. The API is served for real (uvicorn on a loopback port) on
SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from .conftest import fill

pytestmark = pytest.mark.slow


CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance,
          response_schema_conformance, negative_data_rejection]


async def test_every_operation_answers_as_documented_never_500(
        engine: AsyncEngine, api_url: str) -> None:
    await fill(engine)
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
