"""Reverse/forward-path parsing and reply formatting."""

from __future__ import annotations

import pytest

from postfleet.core.smtp import replies
from postfleet.ingress_smtp.grammar import envelope_path, parse_path, postfix_text, reply_line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<a@b.example>", ("a@b.example", [])),
        (" <a@b.example> SIZE=10 BODY=8BITMIME", ("a@b.example", ["SIZE=10", "BODY=8BITMIME"])),
        ("<>", ("", [])),
        ("a@b.example", ("a@b.example", [])),
        ("<@hop1,@hop2:a@b.example>", ("a@b.example", [])),
        ('<"john smith"@b.example>', ('"john smith"@b.example', [])),
        ('<"odd>name"@b.example>', ('"odd>name"@b.example', [])),
        ("<postmaster>", ("postmaster", [])),
        ("<a@[192.0.2.1]>", ("a@[192.0.2.1]", [])),
        ("<a b@c.example>", None),
        ("<a@b.example", None),
        ("<a@b.example>SIZE=1", None),
        ("<a@>", None),
        ("<@b.example>", None),
        ("<@hop:>", ("", [])),
        ("<a<b@c.example>", None),
        ('<"unterminated@b.example>', None),
    ],
)
def test_parse_path(text: str, expected: tuple[str, list[str]] | None) -> None:
    assert parse_path(text) == expected


@pytest.mark.parametrize(
    ("arg", "command", "expected"),
    [
        ("FROM:<a@b.example> SIZE=10", "MAIL", ("a@b.example", ["SIZE=10"])),
        ("from:<>", "MAIL", ("", [])),
        ("TO:<c@d.example>", "RCPT", ("c@d.example", [])),
        (None, "MAIL", replies.MAIL_SYNTAX),
        ("TO:<c@d.example>", "MAIL", replies.MAIL_SYNTAX),
        ("FROM:<a b>", "MAIL", replies.BAD_SENDER_SYNTAX),
        ("FROM:<a@b.example>", "RCPT", replies.RCPT_SYNTAX),
        ("TO:<>", "RCPT", replies.BAD_ADDRESS_SYNTAX),  # no null recipient
        ("TO:<c@d.example", "RCPT", replies.BAD_ADDRESS_SYNTAX),
    ],
)
def test_envelope_path(arg: str | None, command: str, expected: object) -> None:
    assert envelope_path(arg, command) == expected


def test_reply_lines() -> None:
    assert reply_line(replies.DATA_GO) == "354 End data with <CR><LF>.<CR><LF>"
    assert reply_line(replies.RELAY_DENIED) == "554 5.7.1 Relay access denied"
    assert postfix_text('500 Error: command "XYZZY" not recognized') == (
        "502 5.5.2 Error: command not recognized")
    assert postfix_text("250 2.0.0 Ok") == "250 2.0.0 Ok"
