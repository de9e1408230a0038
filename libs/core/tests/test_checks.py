"""header_checks/body_checks: Postfix's table syntax and actions on real
messages (plain and MIME), byte for byte where nothing matched."""

from __future__ import annotations

from pathlib import Path

import pytest

from postfleet.core.checks.message import Checks, CheckSettings, content_reply
from postfleet.core.checks.tables import TableError, load_table, parse_table

MESSAGE = (b"Received: from a\r\n\tby b\r\nFrom: <a@example.org>\r\nSubject: Hello world\r\n"
           b"X-Mailer: test\r\n\r\nfirst line\r\nsecond line\r\n")


def checks(tmp_path: Path, **tables: str) -> Checks:
    settings: dict[str, object] = {}
    for name, text in tables.items():
        path = tmp_path / name
        path.write_text(text)
        settings[name] = [f"pcre:{path}"] if name != "mime_header_checks" else [f"regexp:{path}"]
    return Checks(CheckSettings.model_validate(settings))


def test_table_syntax_first_match_groups_negation_and_if_blocks() -> None:
    table = parse_table(
        "# comment\n"
        "/^Subject: (.*)offer/  WARN offer: $1 and ${1}$$\n"
        "if /^From:/\n"
        "!/example\\.org/       REJECT foreign\n"
        "endif\n"
        "/^X-Mailer: test/      PREPEND X-Tested:\n"
        "  yes\n")
    assert table.lookup("Subject: special offer") == "WARN offer: special  and special $"
    assert table.lookup("From: <x@example.org>") is None
    assert table.lookup("FROM: <x@elsewhere.test>") == "REJECT foreign"  # i is the default
    assert table.lookup("X-Mailer: test") == "PREPEND X-Tested: yes"
    assert parse_table("/abc/i DUNNO").lookup("ABC") is None  # i toggles it off


@pytest.mark.parametrize("text, error", [
    ("if /a/\n/b/ OK\n", "IF has no matching ENDIF"),
    ("endif\n", "ENDIF without matching IF"),
    ("/a/\n", "no result"),
    ("/a REJECT\n", "missing closing /"),
    ("/(/ REJECT\n", "bad pattern"),
])
def test_bad_tables_name_the_line(text: str, error: str) -> None:
    with pytest.raises(TableError, match=error):
        parse_table(text)


def test_load_table_needs_a_kind_and_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="need regexp:/path"):
        load_table(str(tmp_path / "x"))
    with pytest.raises(TableError, match="No such file"):
        load_table(f"regexp:{tmp_path / 'missing'}")


def test_nothing_matched_leaves_the_message_byte_for_byte(tmp_path: Path) -> None:
    verdict = checks(tmp_path, header_checks="/^Subject: nope/ REJECT\n",
                     body_checks="/nope/ REJECT\n").run(MESSAGE)
    assert verdict.body == MESSAGE and verdict.reject is None and not verdict.actions


def test_reject_texts_are_postfix_s(tmp_path: Path) -> None:
    assert str(content_reply("")) == "550 5.7.1 message content rejected"
    assert str(content_reply("no spam")) == "550 5.7.1 no spam"
    assert str(content_reply("5.7.0 policy")) == "550 5.7.0 policy"
    assert str(content_reply("4.7.1 later")) == "451 4.7.1 later"
    verdict = checks(tmp_path, header_checks="/^Received:.*\\n.*by b/ REJECT\n").run(MESSAGE)
    assert str(verdict.reject) == "550 5.7.1 message content rejected"
    assert verdict.actions[0].word == "reject" and verdict.actions[0].context == "header"
    assert verdict.actions[0].content == "Received: from a \tby b"


def test_header_edits_and_flags(tmp_path: Path) -> None:
    verdict = checks(tmp_path, header_checks=(
        "/^X-Mailer:/ IGNORE\n"
        "/^Subject: (.*)/ REPLACE Subject: [tagged] $1\n"
        "/^From:/ PREPEND X-Checked: yes\n"
        "/^Received:/ HOLD suspicious relay\n")).run(MESSAGE)
    assert verdict.body == (b"Received: from a\r\n\tby b\r\nX-Checked: yes\r\n"
                            b"From: <a@example.org>\r\nSubject: [tagged] Hello world\r\n"
                            b"\r\nfirst line\r\nsecond line\r\n")
    assert verdict.hold and verdict.hold_reason.startswith("header Received: from a")
    assert [a.word for a in verdict.actions] == ["hold", "prepend", "replace"]


def test_discard_redirect_filter_and_body_lines(tmp_path: Path) -> None:
    assert checks(tmp_path, body_checks="/^second/ DISCARD\n").run(MESSAGE).discard
    redirected = checks(tmp_path, body_checks="/^first/ REDIRECT spam@example.org\n").run(MESSAGE)
    assert redirected.redirect == "spam@example.org"
    filtered = checks(tmp_path, header_checks="/^Subject:/ FILTER smtp:[127.0.0.1]:10025\n"
                      ).run(MESSAGE)
    assert filtered.filter == "smtp:[127.0.0.1]:10025" and filtered.body == MESSAGE
    edited = checks(tmp_path, body_checks="/^first/ PREPEND zeroth line\n/^second/ IGNORE\n"
                    ).run(MESSAGE)
    assert edited.body.endswith(b"\r\n\r\nzeroth line\r\nfirst line\r\n")


MIME = (b"From: <a@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n"
        b"preamble\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
        b"--XYZ\r\nContent-Type: message/rfc822\r\n\r\n"
        b"From: <inner@example.net>\r\nSubject: inner\r\n\r\ninner body\r\n"
        b"--XYZ--\r\nepilogue\r\n")


def test_mime_and_nested_headers_go_to_their_own_tables(tmp_path: Path) -> None:
    seen = checks(tmp_path,
                  header_checks="/^From:/ WARN primary\n",
                  mime_header_checks="/^Content-Type: message/ WARN mime\n",
                  nested_header_checks="/^(From|Subject):/ WARN nested\n",
                  body_checks="/^(part one|inner body|--XYZ--)$/ WARN body\n").run(MIME)
    assert [(a.text, a.content) for a in seen.actions] == [
        ("primary", "From: <a@example.org>"),
        ("body", "part one"),
        ("mime", "Content-Type: message/rfc822"),
        ("nested", "From: <inner@example.net>"),
        ("nested", "Subject: inner"),
        ("body", "inner body"),
        ("body", "--XYZ--"),
    ]
    assert seen.body == MIME


def test_mime_header_checks_default_to_header_checks(tmp_path: Path) -> None:
    verdict = checks(tmp_path, header_checks="/^Content-Type: text/ REJECT no text parts\n"
                     ).run(MIME)
    assert str(verdict.reject) == "550 5.7.1 no text parts"


def test_body_checks_size_limit_per_part(tmp_path: Path) -> None:
    (tmp_path / "b").write_text("/^late/ REJECT\n")
    body = b"Subject: x\r\n\r\n" + b"x" * 100 + b"\r\nlate\r\n"
    small = Checks(CheckSettings(body_checks=[f"regexp:{tmp_path / 'b'}"],
                                 body_checks_size_limit=50))
    assert small.run(body).reject is None
    assert Checks(CheckSettings(body_checks=[f"regexp:{tmp_path / 'b'}"])).run(body).reject


NESTED_MULTIPART = (
    b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n"
    b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
    b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--inner--\r\ninner epilogue\r\n"
    b"--outer\r\nContent-Type: application/x-msdownload; name=\"evil.exe\"\r\n\r\nMZ\r\n"
    b"--outer--\r\n")


def test_parts_after_a_nested_multipart_keep_their_header_class(tmp_path: Path) -> None:
    seen = checks(tmp_path, mime_header_checks="/name=.*\\.exe/ REJECT no executables\n",
                  body_checks="/^(inner epilogue|Content-Type:.*)$/ WARN body\n").run(
                      NESTED_MULTIPART)
    assert str(seen.reject) == "550 5.7.1 no executables"
    assert [(a.context, a.content) for a in seen.actions if a.word == "warning"] == [
        ("body", "inner epilogue")]
