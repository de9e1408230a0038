"""Real SMTP clients against the role: Python's smtplib and swaks."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import pytest

from postfleet.core.routing.snapshot import RoutingSnapshot
from postfleet.core.testing.swaks import swaks

OUTSIDE = RoutingSnapshot(mynetworks=["10.0.0.0/8"], relay_domains=["relay.example"])


def _smtplib_send(port: int, sender: str, rcpts: list[str]) -> tuple[dict[str, str], object]:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(rcpts), "smtplib"
    msg.set_content(".starts with a dot\nsecond line\n")
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        features = dict(smtp.esmtp_features)
        try:
            refused = smtp.send_message(msg, sender, rcpts)
        except smtplib.SMTPRecipientsRefused as exc:
            return features, exc.recipients
        return features, refused


async def test_smtplib_sends_a_message(make_ingress, cleanup) -> None:
    ingress = await make_ingress()
    features, refused = await asyncio.to_thread(
        _smtplib_send, ingress.port(), "a@b.example", ["c@d.example"])
    assert {"pipelining", "size", "8bitmime", "enhancedstatuscodes"} <= set(features)
    assert features["size"] == "10240000"
    assert refused == {}
    [got] = cleanup.servicer.submitted
    assert b"\r\n.starts with a dot\r\nsecond line\r\n" in got.body


async def test_smtplib_relay_denied(make_ingress, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE)
    _, refused = await asyncio.to_thread(
        _smtplib_send, ingress.port(), "a@b.example", ["x@y.example"])
    assert refused == {"x@y.example": (554, b"5.7.1 <x@y.example>: Relay access denied")}
    assert cleanup.servicer.calls == 0


@pytest.mark.slow
async def test_swaks_with_pipelining(make_ingress, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE)
    code, out = await swaks(
        ingress.port(), "--pipeline",
        "--helo", "swaks.test", "--from", "a@b.example", "--to", "u@relay.example",
        "--body", "hello from swaks")
    assert code == 0, out
    assert "250 2.0.0 Ok: queued as 4Q0001" in out
    [got] = cleanup.servicer.submitted
    assert got.envelope.client.helo == "swaks.test"
    assert b"hello from swaks" in got.body


@pytest.mark.slow
async def test_swaks_relay_denied(make_ingress, cleanup) -> None:
    ingress = await make_ingress(snapshot=OUTSIDE)
    code, out = await swaks(ingress.port(), "--from", "a@b.example", "--to", "x@y.example")
    assert code != 0
    assert "554 5.7.1 <x@y.example>: Relay access denied" in out
    assert cleanup.servicer.calls == 0
