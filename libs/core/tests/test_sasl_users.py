"""The built-in SASL user table: Argon2id hashes in a Dovecot passwd-file,
never clear text; atomic rewrites; re-read when the file changes."""

from __future__ import annotations

import pytest

from postfleet.core.sasl_users import UserTable, hash_password, parse_users, verify_password


def test_hash_and_verify() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("{ARGON2ID}$argon2id$")
    assert "s3cret" not in stored
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cret ")
    assert not verify_password("{PLAIN}s3cret", "s3cret")
    assert not verify_password("{ARGON2ID}garbage", "s3cret")


def test_add_change_delete(tmp_path) -> None:
    path = tmp_path / "sasl" / "users"
    table = UserTable(path)
    assert table.users() == {}
    assert table.add("alice@example.org", "one") is True
    first = table.stored_hash("alice@example.org")
    assert table.add("alice@example.org", "two") is False
    assert table.stored_hash("alice@example.org") != first
    assert verify_password(table.stored_hash("alice@example.org") or "", "two")
    table.add("bob", "three")
    assert sorted(UserTable(path).users()) == ["alice@example.org", "bob"]
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert table.delete("bob") and not table.delete("bob")
    assert list(UserTable(path).users()) == ["alice@example.org"]


def test_clear_text_and_garbage_are_refused() -> None:
    with pytest.raises(ValueError, match=r"line 2: user 'bob' has \{PLAIN\}"):
        parse_users("# users\nbob:{PLAIN}secret\n")
    with pytest.raises(ValueError, match="line 1: expected user:"):
        parse_users("no-colon-here\n")
    with pytest.raises(ValueError, match="bad user name"):
        UserTable("/nonexistent").add("a:b", "x")


def test_dovecot_fields_are_kept(tmp_path) -> None:
    path = tmp_path / "users"
    path.write_text(f"carol:{hash_password('x')}:1000:1000::/home/carol::\n")
    table = UserTable(path)
    table.add("carol", "y")
    assert path.read_text().rstrip("\n").endswith(":1000:1000::/home/carol::")
