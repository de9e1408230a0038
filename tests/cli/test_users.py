"""`postfleet user add|del|list` on a table file, as an administrator runs it."""

from __future__ import annotations

import io

import pytest

from postfleet.cli.main import main
from postfleet.core.sasl_users import UserTable, verify_password


def test_user_add_list_del(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "users"
    monkeypatch.setattr("sys.stdin", io.StringIO("first secret\n"))
    assert main(["user", "add", "alice@example.org", "--file", str(path),
                 "--password-stdin"]) == 0
    monkeypatch.setenv("POSTFLEET_SMTPD_SASL_PATH", str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO("bob's\n"))
    assert main(["user", "add", "bob", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["user", "list"]) == 0
    assert capsys.readouterr().out == "alice@example.org\nbob\n"
    stored = UserTable(path).stored_hash("alice@example.org") or ""
    assert verify_password(stored, "first secret")
    assert "secret" not in path.read_text()
    assert main(["user", "del", "bob"]) == 0
    assert main(["user", "del", "bob"]) == 1
    assert list(UserTable(path).users()) == ["alice@example.org"]


def test_user_needs_a_table_and_a_name(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("POSTFLEET_SMTPD_SASL_PATH", raising=False)
    with pytest.raises(SystemExit, match="--file"):
        main(["user", "list"])
    with pytest.raises(SystemExit, match="needs a user name"):
        main(["user", "del", "--file", str(tmp_path / "u")])
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    with pytest.raises(SystemExit, match="empty password"):
        main(["user", "add", "x", "--file", str(tmp_path / "u"), "--password-stdin"])
