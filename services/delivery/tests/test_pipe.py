"""The pipe transport (Postfix's pipe(8)): master.cf attributes, argv=
macros, the content's flags, and how a command's end maps to an outcome."""

from __future__ import annotations

import pytest

from postfleet.core.db.status import Outcome as Status
from postfleet.core.proto.delivery.v1 import delivery_pb2
from postfleet.delivery.pipe import (
    PipeConfigError,
    PipeTransport,
    command_status,
    expand_argv,
    parse_pipe_service,
)
from postfleet.delivery.store import StoredMessage

JOB = delivery_pb2.Job(
    queue_id="Q1", sender="Alice@Sender.test", nexthop="Example.TEST",
    recipients=[delivery_pb2.JobRecipient(id=1, address="Bob+News@Example.TEST"),
                delivery_pb2.JobRecipient(id=2, address="carol@example.test")])


def test_the_tutorials_service_line() -> None:
    service = parse_pipe_service(
        "flags=Rq user=seguro argv=/etc/postfix/filtro -f ${sender} -- ${recipient}")
    assert service.argv == ("/etc/postfix/filtro", "-f", "${sender}", "--", "${recipient}")
    assert (service.flags, service.user, service.eol) == ("Rq", "seguro", b"\n")
    assert expand_argv(service, JOB, 10) == [
        "/etc/postfix/filtro", "-f", "Alice@Sender.test", "--", "Bob+News@Example.TEST",
        "carol@example.test"]


def test_macros_per_recipient_and_lower_casing() -> None:
    service = parse_pipe_service(
        "flags=hu argv=/bin/x ${nexthop} ${queue_id} ${size} ${user}:${extension}@${domain}")
    assert expand_argv(service, JOB, 42) == [
        "/bin/x", "example.test", "Q1", "42", "bob:News@example.test", "carol:@example.test"]


@pytest.mark.parametrize("text, error", [
    ("flags=R", "missing argv="),
    ("flags=Z argv=/bin/true", "unknown flags Z"),
    ("color=red argv=/bin/true", "unknown pipe attribute"),
    ("argv=/bin/x ${nosuch}", "unknown macro"),
    ("user=root argv=/bin/true", "user=root is not allowed"),
])
def test_bad_service_lines(text: str, error: str) -> None:
    with pytest.raises(PipeConfigError, match=error):
        parse_pipe_service(text)


@pytest.mark.parametrize("status, output, dsn, text", [
    (0, "", "2.0.0", "delivered via filtro service"),
    (0, "queued as X", "2.0.0", "delivered via filtro service (queued as X)"),
    (75, "", "4.3.0", "temporary failure"),
    (69, "no way", "5.3.0", "service unavailable. Command output: no way"),
    (67, "", "5.1.1", "user unknown"),
    (69, "5.7.1 spam", "5.7.1", "spam"),
    (1, "", "5.3.0", 'Command died with status 1: "/bin/f -x"'),
    (-9, "", "4.3.0", 'Command died with signal 9: "/bin/f -x"'),
])
def test_how_a_command_ends(status: int, output: str, dsn: str, text: str) -> None:
    result = command_status(status, output, "/bin/f -x", "filtro")
    assert (result.dsn, result.reply) == (dsn, text)
    assert result.status is Status.from_dsn(dsn)


@pytest.mark.slow
async def test_a_command_runs_as_its_user_and_reads_the_message() -> None:
    transport = PipeTransport("p", parse_pipe_service(
        "flags=R user=nobody argv=/bin/sh -c ${sender}"), 30)
    job = delivery_pb2.Job(queue_id="Q", sender='id -un; grep -c "^Return-Path: " -',
                           recipients=[delivery_pb2.JobRecipient(id=1, address="x@y.test")])
    done = await transport.deliver(job, StoredMessage("Q", job.sender, b"Subject: x\r\n\r\nhi\r\n"))
    assert [o.reply for o in done.outcomes] == ["delivered via p service (nobody 1)"]


@pytest.mark.slow
async def test_a_command_past_its_time_limit_is_killed_and_bounces() -> None:
    transport = PipeTransport("p", parse_pipe_service("argv=/bin/sleep 30"), 0.5)
    done = await transport.deliver(JOB, StoredMessage("Q", "a@b", b"x\r\n"))
    assert {(o.dsn, o.reply) for o in done.outcomes} == {
        ("5.3.0", 'Command time limit exceeded: "/bin/sleep 30"')}
