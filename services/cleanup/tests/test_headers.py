"""cleanup's header fix-ups: Received on top, Message-ID and Date where missing."""

from __future__ import annotations

from postfleet.cleanup.headers import fix_up, header_block_end

KW = dict(queue_id="QID1", myhostname="mx.test", helo="client.test", client_name="unknown",
          client_addr="127.0.0.1", protocol="ESMTP", now=1_700_000_000.0)


def test_missing_message_id_and_date_are_added_and_body_is_untouched() -> None:
    raw = b"Subject: hi\r\nFrom: a@x.test\r\n\r\nline one\r\n.line with dot\r\n"
    out = fix_up(raw, recipients=["b@y.test"], **KW)
    head, _, body = out.partition(b"\r\n\r\n")
    assert out.startswith(b"Received: from client.test (unknown [127.0.0.1])\r\n")
    assert b"\tby mx.test (postfleet) with ESMTP id QID1\r\n\tfor <b@y.test>; " in head
    assert b"Message-ID: <20231114221320.QID1@mx.test>" in head
    assert b"\r\nDate: Tue, 14 Nov 2023 22:13:20 -0000" in head
    assert body == b"line one\r\n.line with dot\r\n"


def test_present_headers_are_kept_not_duplicated() -> None:
    raw = b"Message-Id: <x@y>\r\nDATE: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nbody\r\n"
    out = fix_up(raw, recipients=["a@b", "c@d"], **KW)
    assert out.count(b"essage-I") == 1 and out.lower().count(b"\ndate:") == 1
    # several recipients: no "for <…>" clause
    assert b"for <" not in out


def test_a_message_without_headers_gets_a_separator() -> None:
    out = fix_up(b"just a body line\r\n", recipients=["a@b"], **KW)
    head, sep, body = out.partition(b"\r\n\r\n")
    assert sep and body == b"just a body line\r\n" and b"Date: " in head


def test_folded_headers_stay_in_the_header_block() -> None:
    raw = b"Subject: a\r\n  folded\r\nX: y\r\n\r\nb\r\n"
    end, blank = header_block_end(raw)
    assert blank and raw[end:] == b"\r\nb\r\n"


def test_smtpd_comments_sit_between_from_and_by() -> None:
    out = fix_up(b"Subject: s\r\n\r\nb\r\n", recipients=["a@b"], comments=[
        "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))",
        "(No client certificate requested)",
        "(Authenticated sender: we(ird\x07)", "unbalanced) (", ], **KW)
    assert out.startswith(
        b"Received: from client.test (unknown [127.0.0.1])\r\n"
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits))\r\n"
        b"\t(No client certificate requested)\r\n"
        b"\t(Authenticated sender: we(ird?))\r\n"
        b"\t(unbalanced? ())\r\n"
        b"\tby mx.test (postfleet) with ESMTP id QID1\r\n")
