"""Postfix lookup tables: inline, postmap source files (re-read on change),
regexp/pcre with groups and negation, cidr; partial keys only on text tables."""

from __future__ import annotations

import os

import pytest

from postfleet.core.dicts import Maps, open_table


def test_inline_table_with_grouped_entries() -> None:
    table = open_table("inline:{ 192.0.2.1=REJECT, {Spam.Example = 550 go away}, ok=OK }")
    assert table.lookup("192.0.2.1") == "REJECT"
    assert table.lookup("spam.example") == "550 go away"
    assert table.lookup("SPAM.EXAMPLE", partial=True) == "550 go away"
    assert table.lookup("other") is None


def test_hash_reads_the_postmap_source_and_follows_changes(tmp_path) -> None:
    path = tmp_path / "access"
    path.write_text("# comment\nExample.COM  REJECT\nuser@  OK\nlong  550\n  continued text\n")
    table = open_table(f"hash:{path}")
    assert table.lookup("example.com") == "REJECT"
    assert table.lookup("user@", partial=True) == "OK"
    assert table.lookup("long") == "550 continued text"
    path.write_text("example.com OK\n")
    os.utime(path, ns=(1, 1))  # a different stamp even within one clock tick
    assert table.lookup("example.com") == "OK"


def test_regexp_and_pcre(tmp_path) -> None:
    path = tmp_path / "helo.re"
    path.write_text("/^(\\d+)\\.(\\d+)\\.\\d+\\.\\d+$/ 550 dotted quad $1.$2\n"
                    "/^UPPER$/i REJECT case matters\n!/\\./ 504 no dot\n")
    for kind in ("regexp", "pcre"):
        table = open_table(f"{kind}:{path}")
        assert table.lookup("10.1.2.3") == "550 dotted quad 10.1"
        assert table.lookup("localhost") == "504 no dot"
        assert table.lookup("UPPER") == "REJECT case matters"
        assert table.lookup("upper") == "504 no dot"  # "i" turned case folding off
        assert table.lookup("10.1.2.3", partial=True) is None  # patterns: full keys only
        assert table.lookup("mx.example") is None


def test_cidr(tmp_path) -> None:
    path = tmp_path / "clients.cidr"
    path.write_text("192.0.2.0/24 REJECT\n2001:db8::/32 OK\n198.51.100.7 DUNNO\n")
    table = open_table(f"cidr:{path}")
    assert table.lookup("192.0.2.77") == "REJECT"
    assert table.lookup("2001:db8::5") == "OK"
    assert table.lookup("198.51.100.7") == "DUNNO"
    assert table.lookup("203.0.113.1") is None
    assert table.lookup("not-an-address") is None


@pytest.mark.parametrize(("spec", "error"), [
    ("nocolon", "type:name"),
    ("ldap:/etc/ldap.cf", "unsupported table type"),
    ("inline:a=b", "inline:{"),
    ("inline:{ novalue }", "not key=value"),
    ("hash:/nonexistent/file", "cannot read"),
])
def test_bad_tables_say_why(spec: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        open_table(spec)


def test_bad_regexp_lines_say_where(tmp_path) -> None:
    path = tmp_path / "bad.re"
    path.write_text("/ok/ OK\nif /x/\n")
    with pytest.raises(ValueError, match="line 2: if/endif"):
        open_table(f"regexp:{path}")
    path.write_text("/(/ OK\n")
    with pytest.raises(ValueError, match="line 1"):
        open_table(f"pcre:{path}")


def test_maps_search_in_order() -> None:
    maps = Maps(["inline:{ a=1 }", "inline:{ a=2, b=3 }"])
    assert (maps.lookup("a"), maps.lookup("b"), maps.lookup("c")) == ("1", "3", None)
    assert not Maps([])
