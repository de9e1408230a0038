"""The filter chain against real scanners (clamd with an EICAR test
signature, spamd with GTUBE) and against scanners that cannot answer:
actions as configured, the failure mode's defer or pass-with-a-header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postfleet.core.testing.ports import free_port
from postfleet.core.testing.scanners import EICAR, GTUBE, Clamd, Spamd
from postfleet.filter.chain import Chain
from postfleet.filter.settings import FilterSettings

CLEAN = b"From: <a@example.org>\r\nSubject: hello\r\n\r\nnothing to see\r\n"
SPAM = CLEAN.replace(b"nothing to see", GTUBE.encode())
VIRUS = CLEAN.replace(b"nothing to see", EICAR.encode())


def chain(**settings: Any) -> Chain:
    return Chain(FilterSettings(myhostname="mx.test", **settings))


@pytest.mark.slow
async def test_clamd_and_spamd_verdicts(clamd: Clamd, spamd: Spamd) -> None:
    both = {"clamd_address": clamd.address, "spamd_address": spamd.address}
    clean = await chain(**both).scan(CLEAN)
    assert clean.verb == "pass"
    assert clean.body.startswith(b"X-Virus-Scanned: clamd at mx.test\r\nX-Spam-Status: No, ")
    assert clean.body.endswith(CLEAN)

    virus = await chain(**both, virus_action="hold").scan(VIRUS)
    assert (virus.verb, virus.reason) == ("hold", "INFECTED: Eicar-Test-Signature.UNOFFICIAL")
    rejected = await chain(**both).scan(VIRUS)
    assert str(rejected.reply) == (
        "554 5.7.0 Rejected: virus found: Eicar-Test-Signature.UNOFFICIAL")

    spam = await chain(**both).scan(SPAM)
    assert spam.verb == "reject" and str(spam.reply).startswith("554 5.7.0 Rejected: spam (")
    assert (await chain(**both, spam_action="discard").scan(SPAM)).verb == "discard"
    tagged = await chain(**both, spam_action="pass").scan(SPAM)
    assert tagged.verb == "pass" and b"X-Spam-Status: Yes, score=" in tagged.body


async def test_a_scanner_that_cannot_answer_defers_or_passes_with_a_header() -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    deferred = await chain(clamd_address=nowhere, clamd_timeout=5).scan(CLEAN)
    assert deferred.verb == "defer" and deferred.reply is not None
    assert str(deferred.reply).startswith(
        f"451 4.3.0 content scanner unavailable: clamd {nowhere}:")
    passed = await chain(spamd_address=nowhere, spamd_failure_mode="pass",
                         spamd_timeout=5).scan(CLEAN)
    assert passed.verb == "pass"
    assert passed.body.startswith(f"X-Spam-Status: unscanned (spamd {nowhere}:".encode())


async def test_checks_come_first(tmp_path: Path) -> None:
    table = tmp_path / "body_checks"
    table.write_text("/nothing to see/ REJECT 5.7.0 not here\n"
                     "/^Subject: hold me/ HOLD\n")
    checked = chain(body_checks=[f"regexp:{table}"], header_checks=[f"regexp:{table}"])
    rejected = await checked.scan(CLEAN)
    assert (rejected.verb, str(rejected.reply)) == ("reject", "550 5.7.0 not here")
    held = await checked.scan(CLEAN.replace(b"hello", b"hold me").replace(b"nothing", b"a"))
    assert held.verb == "hold" and held.reason.startswith("header Subject: hold me")
