"""The milter client (MTA side) against a scripted milter on a loopback
socket: negotiation, per-stage verdicts, end-of-message edits, and
milter_default_action when the milter is away."""

from __future__ import annotations

import struct

import pytest

from postfleet.core.milter import wire
from postfleet.core.milter.client import Milters, split_message
from postfleet.core.milter.settings import MilterParams, parse_milter
from postfleet.core.testing.milters import MilterScript, scripted_milter
from postfleet.core.testing.ports import free_port

MACROS = {wire.SMFIC_CONNECT: "j {daemon_name}", wire.SMFIC_MAIL: "{mail_addr}",
          wire.SMFIC_RCPT: "{rcpt_addr}"}
MESSAGE = (b"From: a@example.test\r\nSubject: first\r\nX-Scan: old\r\n\r\n"
           b"caf\xe9 body\r\n")  # 8-bit, not UTF-8


def test_milter_entries_and_their_own_settings() -> None:
    params = MilterParams(milter_default_action="accept", milter_command_timeout="10s")
    plain = parse_milter("inet:127.0.0.1:8891", params)
    assert (plain.endpoint, plain.default_action, plain.command_timeout) == (
        ("inet", "127.0.0.1", 8891), "accept", 10.0)
    braced = parse_milter("{ inet:localhost:8892, default_action=tempfail, "
                          "content_timeout=1m, protocol=4 }", params)
    assert (braced.name, braced.default_action, braced.content_timeout, braced.protocol) == (
        "inet:localhost:8892", "tempfail", 60.0, 4)
    assert parse_milter("unix:/run/opendkim.sock", params).endpoint == (
        "unix", "/run/opendkim.sock", 0)
    for bad in ("tcp:1.2.3.4:5", "{ inet:h:1, default_action=bounce }", "{ inet:h:1, x=1 }"):
        with pytest.raises(ValueError):
            parse_milter(bad, params)
    with pytest.raises(ValueError):
        MilterParams(smtpd_milters="inet:127.0.0.1:1 nonsense")
    assert MilterParams().milter_default_action == "tempfail"  # Postfix's default


def milters(*names: str, **params: object) -> Milters:
    settings = MilterParams(smtpd_milters=list(names), **params)  # type: ignore[arg-type]
    return Milters(settings.milters(settings.smtpd_milters), MACROS)


async def test_verdicts_macros_and_end_of_message_edits() -> None:
    script = MilterScript(macros={2: "{mail_addr} {auth_authen}"}, replies={
        wire.SMFIC_RCPT: [wire.packet(wire.SMFIR_REPLYCODE,
                                      b"550 5.1.1 <nobody@x.test>: 100%% unknown\0")],
        wire.SMFIC_BODYEOB: [
            wire.packet(wire.SMFIR_INSHEADER, struct.pack("!L", 0) + wire.strings(
                "DKIM-Signature", "v=1; d=example.test")),
            wire.packet(wire.SMFIR_CHGHEADER, struct.pack("!L", 1) + wire.strings(
                "Subject", "[scanned] first")),
            wire.packet(wire.SMFIR_CHGHEADER, struct.pack("!L", 1) + wire.strings(
                "X-Scan", "")),
            wire.packet(wire.SMFIR_ADDHEADER, wire.strings("X-Milter", "yes")),
            wire.packet(wire.SMFIR_REPLBODY, b"new \xff body\n"),
            wire.packet(wire.SMFIR_ADDRCPT, wire.strings("<archive@x.test>")),
            wire.packet(wire.SMFIR_QUARANTINE, wire.strings("looks odd")),
            wire.packet(wire.SMFIR_CONTINUE),
        ]})
    async with scripted_milter(script) as name:
        chain = milters(name)
        assert (await chain.connect("client.test", "192.0.2.1", 4321,
                                    {"j": "mx.test", "{daemon_name}": "mx"})).reply is None
        assert (await chain.mail("a@example.test", ["BODY=8BITMIME"],
                                 {"{mail_addr}": "a@example.test", "{auth_authen}": "alice",
                                  "j": "not asked for MAIL"})).reply is None
        refused = await chain.rcpt("nobody@x.test", [], {})
        assert str(refused.reply) == "550 5.1.1 <nobody@x.test>: 100% unknown"
        assert (await chain.rcpt("bob@x.test", [], {})).reply is None
        assert (await chain.data({})).reply is None
        header_fields, body = split_message(MESSAGE)
        outcome = await chain.message(header_fields, body, {})
        await chain.close()
    assert outcome.decision.reply is None and outcome.decision.hold
    assert outcome.decision.hold_reason == "looks odd"
    assert outcome.message() == (
        b"DKIM-Signature: v=1; d=example.test\r\nFrom: a@example.test\r\n"
        b"Subject: [scanned] first\r\nX-Milter: yes\r\n\r\nnew \xff body\r\n")
    assert outcome.add_recipients == ["archive@x.test"]
    seen = dict(script.seen)
    assert seen[wire.SMFIC_CONNECT] == b"client.test\x004" + struct.pack("!H", 4321) + (
        b"192.0.2.1\0")
    assert seen[wire.SMFIC_MAIL] == b"<a@example.test>\0BODY=8BITMIME\0"
    macros = [d for c, d in script.seen if c == wire.SMFIC_MACRO]
    assert b"M{mail_addr}\0a@example.test\0{auth_authen}\0alice\0" in macros
    assert b"Cj\0mx.test\0{daemon_name}\0mx\0" in macros
    assert (wire.SMFIC_BODY, b"caf\xe9 body\r\n") in script.seen  # 8-bit clean


async def test_reject_and_tempfail_at_end_of_message() -> None:
    for reply, text in ((wire.SMFIR_REJECT, "550 5.7.1 Command rejected"),
                        (wire.SMFIR_TEMPFAIL, "451 4.7.1 Service unavailable - try again later")):
        script = MilterScript({wire.SMFIC_BODYEOB: [wire.packet(reply)]})
        async with scripted_milter(script) as name:
            chain = milters(name)
            await chain.connect("c", "127.0.0.1", 1, {})
            await chain.mail("a@x.test", [], {})
            outcome = await chain.message(*split_message(MESSAGE), {})
            await chain.close()
        assert str(outcome.decision.reply) == text


@pytest.mark.parametrize(("action", "reply", "hold"), [
    ("accept", None, False),
    ("tempfail", "451 4.7.1 Service unavailable - try again later", False),
    ("reject", "550 5.5.0 Service unavailable", False),
    ("quarantine", None, True),
])
async def test_an_unreachable_milter_follows_milter_default_action(
        action: str, reply: str | None, hold: bool) -> None:
    chain = milters(f"inet:127.0.0.1:{free_port()}", milter_default_action=action,
                    milter_connect_timeout="2s")
    decision = await chain.connect("c", "127.0.0.1", 1, {})
    assert (None if decision.reply is None else str(decision.reply)) == reply
    later = await chain.mail("a@x.test", [], {})  # and for the rest of the session
    assert (None if later.reply is None else str(later.reply)) == reply
    outcome = await chain.message(*split_message(MESSAGE), {})
    assert outcome.decision.hold is hold
    assert outcome.message() == MESSAGE
    await chain.close()
